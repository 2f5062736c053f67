#!/usr/bin/env python3
"""Write the introduction's table of every claim, from the claims records the chapters store.

    python tools/claims_summary.py           # (re)write summary/claims.md
    python tools/claims_summary.py --check   # exit 1 if summary/claims.md is not what the chapters say

Each chapter that states its claims with ``lib.report.claims.decide`` glues them, all of them, as
one record (``claims.glue_registry``, glue name ``claims_registry``). This tool reads those records
from the chapters' stored outputs — it executes nothing — and writes one Markdown table with a row
per claim, grouped by paper, which ``intro.md`` includes. The verdict and our estimate are not
copied into the table: each cell pastes the chapter's own glued value (``{glue:text}``), so the
build shows exactly what the chapter computed, and a claim a chapter drops or renames breaks the
build rather than lingering. ``make execute`` rewrites the file after re-executing the chapters;
the test suite checks that it is up to date.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lib.report.claims import REGISTRY  # noqa: E402  (the glue name the chapters' records use)

CHAPTERS = REPO / "chapters"
OUTPUT = REPO / "summary" / "claims.md"
HEADER = ("<!-- Written by tools/claims_summary.py from the chapters' stored claims records; "
          "do not edit by hand. -->\n")


def chapter_number(nb: dict, name: str) -> str:
    """The chapter's number, from its title ("# 7. Do ViTs see like CNNs? ..." gives "7")."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    number = line[2:].split(".", 1)[0].strip()
                    if number.isdigit():
                        return number
                    raise ValueError(f"{name}: its title {line!r} does not start with the chapter's number")
    raise ValueError(f"{name} has no '# ' title")


def stored_records(nb: dict, name: str) -> list[dict[str, str]] | None:
    """The claims records glued in a stored notebook, or ``None`` when it glues none."""
    found = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == REGISTRY:
                text = out["data"]["application/papermill.record/text/plain"]
                found.append(json.loads(ast.literal_eval("".join(text) if isinstance(text, list) else text)))
    if len(found) > 1:
        raise ValueError(f"{name} glues {REGISTRY!r} {len(found)} times; a chapter glues all its claims once")
    return found[0] if found else None


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table: no line breaks, no unescaped pipes."""
    return " ".join(text.split()).replace("|", "\\|")


def _paste(page: str, key: str, field: str) -> str:
    """A paste of the chapter's glued ``<key>_<field>`` (the ``:s`` keeps MyST-NB from splitting a format off)."""
    return f"{{glue:text}}`{page}::{key}_{field}:s`"


def summary(chapters: Path = CHAPTERS) -> tuple[str, list[str]]:
    """The Markdown table of every recorded claim, and the chapters that record none (by file name)."""
    rows: dict[str, list[str]] = {}
    missing = []
    for path in sorted(chapters.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        records = stored_records(nb, path.name)
        if records is None:
            missing.append(path.name)
            continue
        page = f"chapters/{path.name}"
        doc = f"{{doc}}`{chapter_number(nb, path.name)} <{page[:-len('.ipynb')]}>`"
        for r in records:
            ours = "—" if r["ours"] == "—" else _paste(page, r["key"], "ours")
            rows.setdefault(r["paper"], []).append(
                f"| {_cell(r['claim'])} | {doc} | {_paste(page, r['key'], 'verdict')} | {ours} |")
    lines = [HEADER, "| Claim | Chapter | Verdict at this scale | Ours |", "|---|---|---|---|"]
    for paper in sorted(rows):
        lines.append(f"| **{_cell(paper)}** | | | |")
        lines.extend(rows[paper])
    return "\n".join(lines) + "\n", missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the written table is out of date")
    args = parser.parse_args(argv)
    try:
        text, missing = summary()
    except (ValueError, KeyError, SyntaxError) as exc:
        print(f"error: cannot read the chapters' claims records: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"error: {OUTPUT.relative_to(REPO)} is out of date; run python tools/claims_summary.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(exist_ok=True)
    tmp = OUTPUT.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUTPUT)
    note = f"; chapters with no claims record yet: {', '.join(missing)}" if missing else ""
    print(f"wrote {OUTPUT.relative_to(REPO)}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
