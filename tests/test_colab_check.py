"""tools/colab_check.py: its bad-input errors and the Colab stand-in it gives the kernel.

The check itself (a fresh environment, every cell of a chapter) runs in `make test` for one
chapter and in `make colab-check` for all; these are its fast parts.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import colab_check  # noqa: E402


def test_a_path_that_is_not_a_chapter_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        colab_check.main([str(tmp_path / "missing.ipynb"), "--venv", str(tmp_path / "venv")])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "missing.ipynb is not a notebook" in message and "01_model_zoo.ipynb" in message
    assert not (tmp_path / "venv").exists()


def test_the_kernel_imports_a_stand_in_google_colab_first(tmp_path):
    """The kernel spec runs this interpreter with `import google.colab` at start, which is how a
    chapter's setup cell knows it is on Colab; the stand-in leaves `google` a namespace package."""
    jupyter, name = colab_check.kernel_home(Path(sys.executable), tmp_path)
    spec = json.loads((jupyter / "kernels" / name / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and "--IPKernelApp.exec_lines=import google.colab" in spec["argv"]
    assert not (tmp_path / "site" / "google" / "__init__.py").exists()
    probe = "import google.colab, sys; print('google.colab' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": spec["env"]["PYTHONPATH"]},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_the_environment_gets_latest_releases_not_pins_and_nothing_of_the_build():
    assert {"torch", "torchvision", "timm"} <= set(colab_check.COLAB_PACKAGES)
    assert not any("==" in p or ">" in p for p in colab_check.COLAB_PACKAGES)
    assert not {"myst-nb", "jupyter-book", "sphinx"} & set(colab_check.COLAB_PACKAGES)
