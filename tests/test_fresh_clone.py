"""The plain-Jupyter path: a chapter runs top to bottom from a fresh clone of the repository.

A fresh clone has the code and the committed checkpoints but no data folder: the chapter's setup
cell must make ``lib`` importable from ``chapters/`` and ``lib.data`` must find Fashion-MNIST by
itself (the Debian package that ``make`` installs). Executed with nbclient, as Jupyter would.
The clone is of the committed repository, so this checks what a reader gets.
"""
import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
CHAPTER = "chapters/01_model_zoo.ipynb"


def test_zoo_chapter_runs_from_a_fresh_clone(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", CHAPTER],
                      capture_output=True).returncode:
        pytest.fail(f"{CHAPTER} is not committed")
    clone = tmp_path / "how-vits-work"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    assert not (clone / "data" / "FashionMNIST").exists()
    nb = nbformat.read(clone / CHAPTER, as_version=4)
    env_data = os.environ.pop("HOWVITS_DATA", None)  # the clone must resolve its own data folder
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(clone / "chapters")}}).execute()
    finally:
        if env_data is not None:
            os.environ["HOWVITS_DATA"] = env_data
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]["evalue"] if errors else ""
    assert (clone / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists()
