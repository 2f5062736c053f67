#!/usr/bin/env python3
"""Run chapters alone, the way Colab runs them, against the latest packages of the registry.

    python tools/colab_check.py                                   # every chapter
    python tools/colab_check.py chapters/05_multistage.ipynb      # one (as `make test` does)

A chapter that passes the full build can still fail on its own: on Colab it starts from a bare
folder, with Colab's own (current) torch and torchvision, and must fetch the rest itself. For each
chapter this check

1. creates a fresh virtual environment with the *latest* torch, torchvision and timm the registry
   serves (not the pins of requirements.txt), the other packages Colab ships (numpy, scipy,
   matplotlib, seaborn, pandas, tqdm) and a Jupyter kernel, and nothing of the book's build;
2. copies the chapter alone into an empty folder, outside the repository;
3. starts a kernel that imports a stand-in ``google.colab`` module first, so the setup cell takes
   its Colab branch: it clones the book from ``HOWVITS_REPO_URL``, here this checkout (its
   committed state: a clone sees no uncommitted change), installs what is missing and changes
   into the clone;
4. runs every cell, and fails on the first error;
5. restarts the kernel (Colab's "Restart session") and runs the setup cell and the two cells after
   it again: the second run must reuse the clone rather than fail.

Outputs are not compared with the stored ones (they may differ in the last digits on other
package versions); every cell must run. The data come from wherever the clone's ``lib.core.data``
finds them (Debian's package here, a download on Colab). Prints one line per chapter with the
package versions used; exits 0 when every chapter passes, 1 otherwise, 2 when the check cannot
run. ``--venv DIR --reuse`` keeps and reuses an environment between runs (quicker, not fresh).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the check installs: the latest of what Colab preinstalls (no version pins), plus the kernel
# and the notebook runner. Not MyST-NB, Sphinx or anything else of the book's build.
COLAB_PACKAGES = ["torch", "torchvision", "timm", "numpy", "scipy", "matplotlib", "seaborn",
                  "pandas", "tqdm", "ipykernel", "nbclient", "nbformat"]
REPORTED = ["torch", "torchvision", "timm", "numpy", "scipy", "matplotlib", "pandas"]
RERUN_CELLS = 3  # after the restart: the setup cell, the settings and the first analysis cell

# Run by the environment's own Python: execute the notebook, then restart and rerun its first
# cells. Prints one JSON line with the result.
RUNNER = r'''
import json, sys, time
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

path, kernel, timeout, rerun = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
nb = nbformat.read(path, as_version=4)
code = [c for c in nb.cells if c.cell_type == "code"]
result = {"cells": len(code), "error": None, "restart": None}
start = time.time()
try:
    NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=False).execute()
except CellExecutionError as error:
    result["error"] = str(error).strip().splitlines()[-1][:400]
result["seconds"] = round(time.time() - start)
nbformat.write(nb, path)
if result["error"] is None:  # Colab's "Restart session": a new kernel, the setup cell again
    again = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in code[:rerun]])
    try:
        NotebookClient(again, timeout=timeout, kernel_name=kernel).execute()
        result["restart"] = "ok"
    except CellExecutionError as error:
        result["restart"] = str(error).strip().splitlines()[-1][:400]
print(json.dumps(result))
'''

STAND_IN = '"""A stand-in for Colab\'s module: its presence is how a notebook knows it runs on Colab."""\n'


def fail(message: str, code: int = 2) -> None:
    print(f"colab-check: {message}", file=sys.stderr)
    sys.exit(code)


def make_environment(venv: Path, reuse: bool) -> Path:
    """A virtual environment with the latest Colab-like packages; returns its python."""
    python = venv / "bin" / "python"
    if reuse and python.exists():
        print(f"reusing the environment in {venv}", flush=True)
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"creating a fresh environment with the latest {', '.join(COLAB_PACKAGES)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "--quiet", "--upgrade", *COLAB_PACKAGES]
    if subprocess.run(install).returncode:
        fail(f"could not install {' '.join(COLAB_PACKAGES)} from the registry into {venv}")
    return python


def versions(python: Path) -> dict[str, str]:
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", script, *REPORTED], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def kernel_home(python: Path, folder: Path) -> tuple[Path, str]:
    """A Jupyter data folder with one kernel: the environment's Python, `google.colab` imported
    at start as on Colab (the stand-in module lives in ``folder/site``)."""
    site = folder / "site" / "google" / "colab"
    site.mkdir(parents=True)  # no google/__init__.py: `google` stays a namespace package
    (site / "__init__.py").write_text(STAND_IN)
    spec = folder / "jupyter" / "kernels" / "colab"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.exec_lines=import google.colab"],
        "display_name": "Colab stand-in", "language": "python",
        "env": {"PYTHONPATH": str(folder / "site")}}))
    return folder / "jupyter", "colab"


def check_chapter(chapter: Path, python: Path, url: str, timeout: int) -> dict:
    """Run one chapter alone in a bare folder; returns the runner's result."""
    with tempfile.TemporaryDirectory(prefix="colab-check-") as tmp:
        folder = Path(tmp)
        content = folder / "content"  # Colab's working folder: nothing but the notebook
        content.mkdir()
        notebook = content / chapter.name
        shutil.copyfile(chapter, notebook)
        jupyter, kernel = kernel_home(python, folder)
        env = {k: v for k, v in os.environ.items()
               if k not in ("HOWVITS_DATA", "PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
        env.update(HOWVITS_REPO_URL=url, JUPYTER_PATH=str(jupyter))
        proc = subprocess.run([str(python), "-c", RUNNER, str(notebook), kernel, str(timeout),
                               str(RERUN_CELLS)], cwd=content, env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or ["the runner failed"])[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", type=Path,
                        help="chapter notebooks (default: every chapters/*.ipynb)")
    parser.add_argument("--venv", type=Path, default=REPO / "_build" / "colab-check" / "venv",
                        help="where to create the environment (default: %(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the environment in --venv if there is one (not fresh)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    chapters = args.chapters or sorted((REPO / "chapters").glob("*.ipynb"))
    if not chapters:
        fail("no chapters/*.ipynb to check")
    for chapter in chapters:
        if chapter.suffix != ".ipynb" or not chapter.is_file():
            fail(f"{chapter} is not a notebook; give chapters/NN_name.ipynb files "
                 f"(choices: {', '.join(p.name for p in sorted((REPO / 'chapters').glob('*.ipynb')))})")
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "lib",
                            "chapters", "requirements-colab.txt"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        print("note: uncommitted changes in lib/, chapters/ or requirements-colab.txt are not "
              "checked (the setup cell clones the committed state)", flush=True)

    python = make_environment(args.venv.resolve(), args.reuse)
    used = versions(python)
    print("packages: " + ", ".join(f"{k} {v}" for k, v in used.items()), flush=True)
    url = REPO.as_uri()
    failures = 0
    for chapter in chapters:
        start = time.time()
        result = check_chapter(chapter.resolve(), python, url, args.timeout)
        seconds = round(time.time() - start)
        ok = result.get("error") is None and result.get("restart") == "ok"
        failures += not ok
        if ok:
            print(f"ok   {chapter.name}: {result['cells']} cells, setup cell rerun after a "
                  f"restart ok ({seconds} s)", flush=True)
        else:
            problem = result.get("error") or f"after a restart: {result.get('restart')}"
            print(f"FAIL {chapter.name}: {problem}", flush=True)
    print(f"{len(chapters) - failures} of {len(chapters)} chapters run alone on "
          + ", ".join(f"{k} {v}" for k, v in used.items()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
