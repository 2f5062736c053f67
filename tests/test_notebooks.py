"""The stored chapter notebooks: one clean, complete, error-free run with nothing machine-specific.

nbval (``make test``) re-executes the chapters and compares outputs; these checks catch what it
cannot: a notebook stored half-run, out of order, with an error, or with a path of this machine.
"""
import json
import re
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


def test_colab_requirements_are_pinned_like_the_main_ones():
    main = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split()
                if "==" in line)
    for line in (REPO / "requirements-colab.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert main.get(name) == version, line
