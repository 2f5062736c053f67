"""Numbers in the book's prose are glued from the chapters' outputs, never typed.

Each chapter computes its numbers and verdicts, glues them (``myst_nb.glue``), and its markdown and
``intro.md`` paste them with ``{glue:text}`key``` or ``{glue:text}`chapters/NN.ipynb::key:s```
(across pages the format ``:s`` is required: MyST-NB splits the format off at the last colon). So a
retrained zoo updates the whole book with ``make execute``. These tests check that every paste
has a stored glue behind it, that no result number is typed into the prose, and (by building a
small book) that a missing key fails the build instead of leaving a hole in a sentence.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "chapters").glob("*.ipynb"))
# summary/claims.md is written from the chapters' claims records and included by intro.md, so its
# pastes resolve against the introduction's folder, the repository's root.
INCLUDED = {REPO / "summary" / "claims.md": REPO}
PAGES = CHAPTERS + [REPO / "intro.md", *INCLUDED]

PASTE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]+)`")
# What is not prose: code, maths, pastes and other roles, link targets, headings and labels.
NOT_PROSE = [re.compile(p, f) for p, f in [
    (r"```.*?```", re.S), (r"\$\$.*?\$\$", re.S), (r"\$[^$\n]+\$", 0),
    (r"\{[a-z:]+\}`[^`]*`", 0), (r"`[^`]*`", 0), (r"\]\([^)]*\)", 0), (r"https?://\S+", 0),
    (r"^#+ .*$", re.M), (r"^\(.*\)=$", re.M)]]
# A result-like number: a decimal, or a percentage (with or without a space before the sign).
RESULT_NUMBER = re.compile(r"(?<![\w.])[-−+]?\d+\.\d+(?:\s?%)?|(?<![\w.])\d+\s?%")
# Settings rather than results: the two data regimes (10% is also chance level on ten classes).
SETTINGS = {"10%", "100%"}


def markdown_of(page: Path) -> str:
    """The prose of a page: a notebook's markdown cells, or the whole of a markdown file."""
    if page.suffix != ".ipynb":
        return page.read_text()
    nb = json.loads(page.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def glued_keys(notebook: Path) -> set[str]:
    """The names glued in a notebook's stored outputs (MyST-NB marks them with "scrapbook")."""
    nb = json.loads(notebook.read_text())
    return {o["metadata"]["scrapbook"]["name"] for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}


def pastes(page: Path) -> list[tuple[Path, str]]:
    """(notebook, key) for every paste on ``page``; ``path::key`` resolves against the page's folder."""
    found = []
    for target in PASTE.findall(markdown_of(page)):
        if "::" in target:
            doc, key = target.split("::", 1)
            assert ":" in key, f"{page.name}: {target!r} needs a format, e.g. {target + ':s'!r}"
            notebook = (INCLUDED.get(page, page.parent) / doc).resolve()
        else:
            notebook, key = page, target
        found.append((notebook, key.split(":", 1)[0]))
    return found


def typed_numbers(text: str) -> list[str]:
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return [m for m in RESULT_NUMBER.findall(text) if m.replace(" ", "") not in SETTINGS]


def test_the_number_finder_finds_numbers_and_skips_pastes_and_maths():
    text = ("The ViT reaches 77.9% and loses 6.4 points; the ResNet 90 %. A setting: 10% of the data. "
            "{glue:text}`acc_vit` and $x = 0.5$ and `lr=0.001` and [a link](#a-1.2) are not prose.")
    assert typed_numbers(text) == ["77.9%", "6.4", "90 %"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_paste_has_a_stored_glue(page):
    assert page.exists()
    missing = []
    for notebook, key in pastes(page):
        if not notebook.exists():
            missing.append(f"{key} (no notebook {notebook.name})")
        elif key not in glued_keys(notebook):
            missing.append(f"{notebook.name}::{key}")
    assert not missing, f"{page.name} pastes keys that no stored output glues: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_prose_types_no_result_number(page):
    typed = typed_numbers(markdown_of(page))
    assert not typed, (f"{page.name} types result numbers into its prose: {typed[:12]}; compute and "
                       "glue them (lib.report.claims.glue_number / glue_text) and paste with {glue:text}")


def _small_book(root: Path, glue_key_removed: str | None) -> Path:
    """A small book with the project's configuration: chapter 1, a page pasting from it, references."""
    for name in ("_config.yml", "references.bib", "references.md"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "tools", root / "tools")
    (root / "_vendor").mkdir()
    (root / "chapters").mkdir()
    nb = json.loads((REPO / "chapters" / "01_model_zoo.ipynb").read_text())
    if glue_key_removed:
        for cell in nb["cells"]:
            cell["outputs"] = [o for o in cell.get("outputs", [])
                               if o.get("metadata", {}).get("scrapbook", {}).get("name") != glue_key_removed]
    (root / "chapters" / "01_model_zoo.ipynb").write_text(json.dumps(nb))
    (root / "intro.md").write_text("# Summary\n\nBest to worst: {glue:text}`chapters/01_model_zoo.ipynb::ranking:s`.\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n"
                                       "  - file: chapters/01_model_zoo\n  - file: references\n")
    return root


def _build(root: Path) -> subprocess.CompletedProcess:
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jupyter_book), "build", "--warningiserror", "--keep-going", str(root)],
                          capture_output=True, text=True, timeout=600, cwd=root)


def test_the_book_build_fails_when_a_pasted_key_is_missing(tmp_path):
    assert "ranking" in glued_keys(REPO / "chapters" / "01_model_zoo.ipynb")
    (tmp_path / "intact").mkdir()
    intact = _build(_small_book(tmp_path / "intact", None))
    assert intact.returncode == 0, f"the intact small book should build:\n{intact.stdout[-3000:]}{intact.stderr[-3000:]}"
    page = (tmp_path / "intact" / "_build" / "html" / "intro.html").read_text()
    assert "Best to worst:" in page and "ResNet" in page, "the pasted ranking is missing from the built page"

    (tmp_path / "broken").mkdir()
    broken = _build(_small_book(tmp_path / "broken", "ranking"))
    assert broken.returncode != 0, "a build with a missing glue key must fail"
    assert "ranking" in broken.stdout + broken.stderr, "the failure should name the missing key"


def glued_values(notebook: Path) -> dict[str, str]:
    """Every glued key of a stored notebook with the text it pastes."""
    values = {}
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                values[name] = "".join(text) if isinstance(text, list) else text
    return values


def settings_of(notebook: Path) -> dict[str, object]:
    """The upper-case assignments of a chapter's parameters cell (the first code cell after set-up)."""
    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    source = "".join(next(c for c in cells if "".join(c["source"]).startswith("# Settings"))["source"])
    found = {}
    for name, value in re.findall(r"^([A-Z_0-9]+)\s*=\s*([^#\n]+)", source, flags=re.M):
        found[name] = ast.literal_eval(value.strip())  # the settings are literals
    return found


def test_chapters_3_and_6_probe_the_hessian_with_one_setting_and_agree_on_the_shared_checkpoint():
    hessian_chapter = REPO / "chapters" / "03_hessian_spectra.ipynb"
    alternet_chapter = REPO / "chapters" / "06_alternet.ipynb"
    three, six = settings_of(hessian_chapter), settings_of(alternet_chapter)
    assert (three["BATCH_SIZE"], three["TOL"], three["TOP_K"]) == \
        (six["HESSIAN_BATCH_SIZE"], six["TOL"], six["TOP_K"])
    assert six["HESSIAN_BATCHES"] <= three["N_BATCHES"]  # chapter 6's batches are chapter 3's first ones
    # the ViT trained on 10% of the data, first probe batch: the same λ_max in both stored chapters
    assert glued_values(hessian_chapter)["vit_small_lambda_max_batch1"] == \
        glued_values(alternet_chapter)["hess_vit_lambda_max_batch1"]
