"""The stored chapter notebooks: one clean, complete, error-free run with nothing machine-specific.

nbval (``make test``) re-executes the chapters and compares outputs; these checks catch what it
cannot: a notebook stored half-run, out of order, with an error, or with a path of this machine.
"""
import json
import os
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
    urls = re.findall(r'REPO_URL = .*"(https://[^"]+)"', setup)
    assert urls == [_config_repository_url()], "the Colab clone URL must be the one in _config.yml"
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), "no `parameters` cell"
    assert "hide-input" in code[0].get("metadata", {}).get("tags", []), "the setup cell is folded in the book"


def _glues_only(cell: dict) -> bool:
    """Every output of the cell is a glued value (MyST-NB's record, not shown where it is made)."""
    return bool(cell["outputs"]) and all(any(k.startswith("application/papermill.record") for k in o.get("data", {}))
                                         for o in cell["outputs"])


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_cells_that_glue_numbers_or_state_verdicts_are_folded(path):
    """The book shows the story and the analysis calls; the code that glues the numbers the prose
    pastes, or turns estimates into verdicts, is folded (hide-input) and one click away."""
    nb = json.loads(path.read_text())
    bad = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
           and (_glues_only(c) or re.search(r"claims\.(judge|glue_claims)\(", "".join(c["source"])))
           and "hide-input" not in c.get("metadata", {}).get("tags", [])]
    assert not bad, f"{path.name}: cells {bad} glue numbers or state verdicts and are not folded (tag hide-input)"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_cell_relies_on_a_semicolon_to_hide_its_value(path):
    """Under nbval a trailing ";" does not silence a cell's last value (it does in Jupyter), so a
    cell relying on it stores no output but shows one when re-executed by the tests."""
    nb = json.loads(path.read_text())
    bad = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
           and "".join(c["source"]).rstrip().endswith(";")]
    assert not bad, f"{path.name}: cells {bad} end with ';'; end them with a statement instead"


def test_colab_requirements_are_lower_bounds_at_the_main_pins():
    """On Colab, only a missing or older package is installed: `>=` the version the stored
    outputs were made with, never an exact pin that would replace Colab's newer release."""
    main = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split()
                if "==" in line)
    lines = [line for line in (REPO / "requirements-colab.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines, "requirements-colab.txt lists nothing"
    for line in lines:
        name, version = line.split(">=")
        assert main.get(name) == version, line


def _setup_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_every_chapter_has_the_same_setup_cell():
    cells = {path.name: _setup_cell(path) for path in CHAPTERS}
    first = next(iter(cells.values()))
    assert all(cell == first for cell in cells.values()), [name for name, cell in cells.items() if cell != first]


def _run_setup_cell_as_on_colab(folder: Path, fail: str = "", url: str = "") -> subprocess.CompletedProcess:
    """Run the setup cell in a new process as Colab would (a `google.colab` module, no /content
    here), with `git` and `pip` replaced by fakes that record their calls; `fail` names the one
    that fails, `url` is put in HOWVITS_REPO_URL."""
    cell = _setup_cell(CHAPTERS[0])
    driver = f"""
import subprocess, sys, types
from pathlib import Path
sys.modules["google.colab"] = types.ModuleType("google.colab")
def fake_run(argv, **kwargs):
    tool = "git" if argv[0] == "git" else "pip"
    print("call", tool, argv[-1] if tool == "pip" else argv[-2])
    if tool == {fail!r}:
        return types.SimpleNamespace(returncode=1)
    if tool == "git":  # "clone": a link to the repository's lib/ is all the cell needs
        Path(argv[-1]).mkdir()
        (Path(argv[-1]) / "lib").symlink_to({str(REPO / "lib")!r})
        (Path(argv[-1]) / "requirements-colab.txt").write_text("")
    return types.SimpleNamespace(returncode=0)
subprocess.run = fake_run
exec(compile({cell!r}, "setup", "exec"))
print("cwd", Path.cwd().name, DEVICE)
"""
    env = {k: v for k, v in os.environ.items() if k != "HOWVITS_REPO_URL"}
    if url:
        env["HOWVITS_REPO_URL"] = url
    return subprocess.run([sys.executable, "-c", driver], cwd=folder, capture_output=True, text=True,
                          timeout=120, env=env)


def test_setup_cell_on_colab_clones_once_and_survives_a_restart(tmp_path):
    """The first run clones and installs; the second (after "Restart session", a new process in
    the same folder) reuses the clone instead of failing, and installs (a no-op) again."""
    runs = []
    for _ in range(2):
        proc = _run_setup_cell_as_on_colab(tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(proc.stdout.split("\n")[:-1])
    clone = tmp_path / "how-vits-work"
    requirements = str(clone / "requirements-colab.txt")
    assert runs[0] == [f"call git {_config_repository_url()}", f"call pip {requirements}", "cwd how-vits-work cpu"]
    assert runs[1] == [f"call pip {requirements}", "cwd how-vits-work cpu"]


def test_setup_cell_clones_the_url_of_howvits_repo_url(tmp_path):
    proc = _run_setup_cell_as_on_colab(tmp_path, url="file:///srv/mirror/how-vits-work")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("call git file:///srv/mirror/how-vits-work\n")


@pytest.mark.parametrize("tool", ["git", "pip"])
def test_a_failed_setup_step_says_which_and_what_to_do(tmp_path, tool):
    proc = _run_setup_cell_as_on_colab(tmp_path, fail=tool)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()
    assert any(line.startswith(f"RuntimeError: setup failed at: {tool}") for line in message), proc.stderr
    assert "internet" in proc.stderr and "run this cell again" in proc.stderr


def _markdown(cell: dict) -> str:
    return "".join(cell["source"]) if cell["cell_type"] == "markdown" else ""


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_opens_with_learning_goals_and_run_times(path):
    cells = json.loads(path.read_text())["cells"]
    goals = _markdown(cells[1])
    assert goals.startswith("**Learning goals.**"), f"{path.name}: the cell after the title states the goals"
    assert goals.count("\n- ") >= 2, f"{path.name}: goals are a list"
    run_time = goals.split("**Run time.**", 1)[-1]
    assert "**Run time.**" in goals and "CPU" in run_time and "GPU" in run_time, \
        f"{path.name}: a run-time estimate for a CPU and for a GPU"


EXERCISE = re.compile(r"^```\{exercise\} (?P<title>.+)\n:label: (?P<label>[\w-]+)\n", re.MULTILINE)
SOLUTION_START = re.compile(r"^```\{solution-start\} (?P<label>[\w-]+)\n:class: dropdown\n```$")


def _exercises(path: Path) -> list[dict]:
    """Each exercise of a chapter: its label, text and the cells of its solution."""
    cells = json.loads(path.read_text())["cells"]
    found = []
    for i, cell in enumerate(cells):
        match = EXERCISE.match(_markdown(cell))
        if not match:
            continue
        start = SOLUTION_START.match(_markdown(cells[i + 1])) if i + 1 < len(cells) else None
        end = next((j for j in range(i + 1, len(cells)) if _markdown(cells[j]).startswith("```{solution-end}")),
                   None)
        found.append({"label": match["label"], "text": _markdown(cell),
                      "start": start["label"] if start else None,
                      "solution": cells[i + 2:end] if start and end else []})
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_exercises_ask_for_a_prediction_and_have_hidden_runnable_solutions(path):
    cells = json.loads(path.read_text())["cells"]
    assert any(_markdown(c).startswith("## Exercises") for c in cells), f"{path.name}: no Exercises section"
    exercises = _exercises(path)
    assert len(exercises) >= 2, f"{path.name}: at least two exercises"
    for ex in exercises:
        assert "**Predict first:**" in " ".join(ex["text"].split()), \
            f"{path.name} {ex['label']}: asks for a prediction first"
        assert ex["start"] == ex["label"], f"{path.name} {ex['label']}: followed by its dropdown solution"
        code = [c for c in ex["solution"] if c["cell_type"] == "code"]
        assert code and all(c["outputs"] for c in code), \
            f"{path.name} {ex['label']}: the solution runs (a code cell, stored with its output)"
        assert any(c["cell_type"] == "markdown" for c in ex["solution"]), \
            f"{path.name} {ex['label']}: the solution explains its result"


def test_exercise_labels_are_unique_across_the_book():
    labels = [ex["label"] for path in CHAPTERS for ex in _exercises(path)]
    assert len(labels) == len(set(labels)), sorted(label for label in labels if labels.count(label) > 1)


def test_the_exercise_extension_is_pinned_and_enabled():
    assert "sphinx-exercise==" in (REPO / "requirements.txt").read_text()
    assert re.search(r"extra_extensions:\s*\n\s+- sphinx_exercise", (REPO / "_config.yml").read_text())
