"""Chapter budget benchmark: execute every chapter on this machine and report time and memory.

Budget (DESIGN.md): at most 4 minutes and 4 GB per chapter on a 2-core CPU (8 minutes for the
loss-landscape and Hessian chapters, 6 for the AlterNet chapter, which runs the analyses of
chapters 3-5 again). Each chapter runs in a fresh process (nbclient with its own
kernel) so that peak memory is the kernel's own. Prints one machine-readable line per chapter:

    bench chapter NAME: seconds=S peak_mb=M budget_s=B within_budget=yes|no

This is a benchmark, not a test: it reports and never fails on a slow machine, except with
``--strict``. Usage: ``python benchmarks/chapters.py [--strict] [chapters/NAME.ipynb ...]``
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = {"02_loss_landscapes": 480, "03_hessian_spectra": 480, "06_alternet": 360}
DEFAULT_BUDGET_S = 240
BUDGET_MB = 4096

# Runs in a child process; its only child is the kernel, so RUSAGE_CHILDREN is the kernel's peak.
RUNNER = r"""
import resource, sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
print(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def run_chapter(path: Path) -> tuple[float, float]:
    """Execute one chapter in a child process; return (wall seconds, peak resident MB of its kernel)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(path.parent)], check=True, cwd=REPO,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, int(proc.stdout.split()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 if a chapter is over budget")
    args = parser.parse_args()
    paths = args.chapters or sorted((REPO / "chapters").glob("*.ipynb"))
    over = 0
    for path in paths:
        budget = BUDGET_S.get(path.stem, DEFAULT_BUDGET_S)
        seconds, peak_mb = run_chapter(path)
        ok = seconds <= budget and peak_mb <= BUDGET_MB
        over += not ok
        print(f"bench chapter {path.stem}: seconds={seconds:.1f} peak_mb={peak_mb:.0f} "
              f"budget_s={budget} within_budget={'yes' if ok else 'no'}", flush=True)
    return 1 if (over and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
