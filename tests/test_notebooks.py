"""The stored chapter notebooks: one clean, complete, error-free run with nothing machine-specific.

nbval (``make test``) re-executes the chapters and compares outputs; these checks catch what it
cannot: a notebook stored half-run, out of order, with an error, or with a path of this machine.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(work|home|root|tmp|Users|opt|usr/local)/\w|[A-Z]:\\\\)")


def _config_repository_url() -> str:
    text = (REPO / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, re.MULTILINE)
    assert match, "_config.yml has no repository url"
    return match.group(1)


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/*.ipynb"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_stored_run_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, f"{path.name}: a code cell was never executed (missing output)"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts} are not one run"
    assert any(c["outputs"] for c in code), f"{path.name}: stored without outputs"
    errors = [o.get("ename") for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"
    streams = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for c in code for o in c["outputs"] if o["output_type"] == "stream")
    assert "Traceback" not in streams and "Warning" not in streams, f"{path.name}: warnings or tracebacks"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_absolute_paths(path):
    hits = ABSOLUTE_PATH.findall(path.read_text())
    assert not hits, f"{path.name} contains absolute paths: {hits[:3]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_conventions(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    assert "{cite}" in "".join(cells[0]["source"]), "the opening cell cites the paper"
    code = [c for c in cells if c["cell_type"] == "code"]
    setup = "".join(code[0]["source"])
    assert "google.colab" in setup and "notebook.setup(" in setup, "the first code cell is the setup cell"
    urls = re.findall(r'REPO_URL = "([^"]+)"', setup)
    assert urls == [_config_repository_url()], "the Colab clone URL must be the one in _config.yml"
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), "no `parameters` cell"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_cell_relies_on_a_semicolon_to_hide_its_value(path):
    """Under nbval a trailing ";" does not silence a cell's last value (it does in Jupyter), so a
    cell relying on it stores no output but shows one when re-executed by the tests."""
    nb = json.loads(path.read_text())
    bad = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
           and "".join(c["source"]).rstrip().endswith(";")]
    assert not bad, f"{path.name}: cells {bad} end with ';'; end them with a statement instead"


def test_colab_requirements_are_pinned_like_the_main_ones():
    main = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split()
                if "==" in line)
    for line in (REPO / "requirements-colab.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert main.get(name) == version, line


def _setup_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_every_chapter_has_the_same_setup_cell():
    cells = {path.name: _setup_cell(path) for path in CHAPTERS}
    first = next(iter(cells.values()))
    assert all(cell == first for cell in cells.values()), [name for name, cell in cells.items() if cell != first]


def test_setup_cell_on_colab_clones_once_and_survives_a_restart(tmp_path):
    """Run the setup cell as Colab would (a `google.colab` module, no /content here), twice: the
    first run clones, the second (after "Restart session") reuses the clone instead of failing."""
    cell = _setup_cell(CHAPTERS[0])
    driver = f"""
import subprocess, sys, types
from pathlib import Path
sys.modules["google.colab"] = types.ModuleType("google.colab")
calls = []
def fake_run(argv, check=False):
    calls.append(argv[1] if argv[0] == "git" else "pip")
    if argv[0] == "git":  # "clone": a copy of the repository's lib/ is all the cell needs
        Path(argv[-1]).mkdir()
        (Path(argv[-1]) / "lib").symlink_to({str(REPO / "lib")!r})
        (Path(argv[-1]) / "requirements-colab.txt").write_text("")
subprocess.run = fake_run
exec(compile({cell!r}, "setup", "exec"))
print(calls, Path.cwd().name, DEVICE)
"""
    runs = []
    for _ in range(2):  # the second run is the restarted session: a new process in the same folder
        proc = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(proc.stdout.strip())
    assert runs == ["['clone', 'pip'] how-vits-work cpu", "['pip'] how-vits-work cpu"]
