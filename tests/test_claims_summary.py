"""The introduction's table of every claim, written from the chapters' stored claims records."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import claims_summary  # noqa: E402

from lib.report import claims, stats  # noqa: E402


def _glue_output(name, text):
    return {"output_type": "display_data", "metadata": {"scrapbook": {"name": name, "mime_prefix": ""}},
            "data": {"application/papermill.record/text/plain": repr(text)}}


def _notebook(title, records=None, times=1):
    outputs = [_glue_output(claims.REGISTRY, json.dumps(records, ensure_ascii=False))] * times if records else []
    return {"cells": [{"cell_type": "markdown", "metadata": {}, "source": [f"# 3. {title}\n", "text"]},
                      {"cell_type": "code", "metadata": {}, "source": [], "outputs": outputs}]}


def _records():
    est = stats.t_interval([1.0, 2.0, 3.5, 2.5])
    hyp = claims.Hypothesis("rise", "Park & Kim 2022", "ViTs | rise less\nthan CNNs", "Fig. 1", est, "positive", 0.5,
                            "a reason", "training runs", True, unit="NLL")
    decided = claims.decide([hyp, claims.not_testable("big", "Raghu et al. 2021", "Needs scale", "f", "no ImageNet")])
    return claims.registry_records(decided)


def test_rows_paste_the_chapters_glue_grouped_by_paper(tmp_path):
    (tmp_path / "03_demo.ipynb").write_text(json.dumps(_notebook("A demo chapter", _records())))
    (tmp_path / "04_plain.ipynb").write_text(json.dumps(_notebook("No claims")))
    text, missing = claims_summary.summary(tmp_path)
    assert missing == ["04_plain.ipynb"]
    lines = text.splitlines()
    assert lines[0].startswith("<!-- Written by tools/claims_summary.py")
    assert lines[1:4] == ["", "| Claim | Chapter | Verdict at this scale | Ours |", "|---|---|---|---|"]
    doc = "{doc}`3 <chapters/03_demo>`"
    assert lines[4:] == [
        "| **Park & Kim 2022** | | | |",
        f"| ViTs \\| rise less than CNNs | {doc} | {{glue:text}}`chapters/03_demo.ipynb::rise_verdict:s` | "
        "{glue:text}`chapters/03_demo.ipynb::rise_ours:s` |",
        "| **Raghu et al. 2021** | | | |",
        f"| Needs scale | {doc} | {{glue:text}}`chapters/03_demo.ipynb::big_verdict:s` | — |",
    ]


def test_a_chapter_that_glues_its_record_twice_is_refused(tmp_path):
    (tmp_path / "03_demo.ipynb").write_text(json.dumps(_notebook("Demo", _records(), times=2)))
    with pytest.raises(ValueError, match="glues 'claims_registry' 2 times"):
        claims_summary.summary(tmp_path)


def test_the_written_table_is_what_the_stored_chapters_say():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "claims_summary.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_chapter_title_without_its_number_is_refused(tmp_path):
    nb = _notebook("Demo", _records())
    nb["cells"][0]["source"] = ["# Demo without a number\n"]
    (tmp_path / "03_demo.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="does not start with the chapter's number"):
        claims_summary.summary(tmp_path)
