"""Claims, verdicts by a stated rule, the claims table and the glued strings."""
import sys

import pytest

from lib.report import claims, stats
from lib.report.claims import judge, not_testable


def est(low, high, value=None, test="Welch t, df = 3.7", n=6, df=3.7):
    value = (low + high) / 2 if value is None else value
    return stats.Estimate(value, low, high, 0.95, n, test, df, None)


ABOVE, BELOW, STRADDLE = est(0.05, 2.59, 1.32), est(-2.0, -0.5), est(-0.3, 0.9)


@pytest.mark.parametrize("estimate, expect, verdict", [
    (ABOVE, "positive", "reproduced"),
    (ABOVE, "negative", "not reproduced"),
    (BELOW, "negative", "reproduced"),
    (BELOW, "positive", "not reproduced"),
    (STRADDLE, "positive", "within noise"),
    (STRADDLE, "negative", "within noise"),
    (est(0.0, 1.0), "positive", "within noise"),  # touching 0 does not exclude it
])
def test_verdicts_follow_the_predicted_sign(estimate, expect, verdict):
    c = judge("rise", "Park & Kim 2022", "ViTs rise less", "Fig. 1a", estimate, expect)
    assert c.verdict == verdict and c.verdict in claims.VERDICTS


def test_rule_text_names_level_test_df_and_n():
    c = judge("rise", "Park & Kim 2022", "s", "f", ABOVE, "positive")
    assert c.rule == ("reproduced if the 95% interval of the difference lies above 0, not reproduced "
                      "if it lies below 0, within noise if it contains 0 (Welch t, df = 3.7, n = 6)")
    neg = judge("rise", "p", "s", "f", stats.paired([1.0, 2.0, 4.0], [2.0, 2.5, 4.2], level=0.9),
                "negative", quantity="mean difference")
    assert neg.rule.startswith("reproduced if the 90% interval of the mean difference lies below 0")
    assert neg.rule.endswith("(paired t, df = 2, n = 3)")
    with pytest.raises(ValueError, match="expect must be one of"):
        judge("rise", "p", "s", "f", ABOVE, "up")


def test_not_testable_needs_a_reason():
    c = not_testable("imagenet", "Raghu et al. 2021", "s", "Fig. 3", "needs ImageNet-scale models")
    assert c.verdict == "not testable here" and c.estimate is None and c.ours == "—"
    for reason in ("", "   "):
        with pytest.raises(ValueError, match="give the reason"):
            not_testable("imagenet", "p", "s", "f", reason)


@pytest.mark.parametrize("key", ["Rise", "rise-1", "rise 1", "", "ri.se", "é"])
def test_bad_keys_are_rejected(key):
    with pytest.raises(ValueError, match="lowercase letters, digits and underscores"):
        judge(key, "p", "s", "f", ABOVE, "positive")


def test_glue_claims_glues_strings_under_the_expected_names():
    recorded = []

    def recorder(name, value, display=True):
        recorded.append((name, value, display))

    boot = stats.bootstrap([0.1, 0.4, 0.2, 0.9, 0.5], seed=0, rows="batches")
    cs = [judge("rise", "Park & Kim 2022", "s", "f", ABOVE, "positive", unit="points"),
          judge("fall", "p", "s", "f", est(-2.0, -0.5, -1.234), "negative", digits=1),
          judge("boot", "p", "s", "f", boot, "positive"),
          not_testable("big", "p", "s", "f", "needs ImageNet")]
    glued = claims.glue_claims(cs, glue=recorder)
    assert glued == {
        "rise_verdict": "reproduced", "rise_value": "+1.32", "rise_interval": "[0.05, 2.59]",
        "rise_ours": "+1.32 [0.05, 2.59] points", "rise_test": "Welch t, df = 3.7, n = 6",
        "fall_verdict": "reproduced", "fall_value": "\u22121.2", "fall_interval": "[\u22122.0, \u22120.5]",
        "fall_ours": "\u22121.2 [\u22122.0, \u22120.5]", "fall_test": "Welch t, df = 3.7, n = 6",
        "boot_verdict": "reproduced", "boot_value": "+0.42", "boot_interval": boot.format_interval(),
        "boot_ours": boot.format(), "boot_test": "percentile bootstrap over 5 batches, 2000 resamples",
        "big_verdict": "not testable here", "big_reason": "needs ImageNet",
    }
    assert recorded == [(k, v, False) for k, v in glued.items()]
    assert all(isinstance(v, str) for _, v, _ in recorded)
    with pytest.raises(ValueError, match=r"unique, repeated: \['rise'\]"):
        claims.glue_claims(cs + cs[:1], glue=recorder)


def test_glue_number_formats_like_estimates():
    recorded = {}
    put = lambda name, value, display: recorded.update({name: (value, display)})  # noqa: E731
    assert claims.glue_number("gap", -0.456, 2, glue=put, unit="points") is None  # no stray cell output
    claims.glue_number("acc", 91.25, 1, glue=put, signed=False)
    assert recorded == {"gap": ("\u22120.46 points", False), "acc": ("91.2", False)}
    with pytest.raises(ValueError, match="name must use only"):
        claims.glue_number("Gap", 1.0, 2, glue=put)


def test_glue_text_glues_the_string_and_refuses_empty_text():
    recorded = {}
    put = lambda name, value, display: recorded.update({name: (value, display)})  # noqa: E731
    assert claims.glue_text("theta_range", "82\u201387\u00b0", glue=put) is None
    assert recorded == {"theta_range": ("82\u201387\u00b0", False)}
    with pytest.raises(ValueError, match="non-empty string"):
        claims.glue_text("empty", "  ", glue=put)
    with pytest.raises(ValueError, match="name must use only"):
        claims.glue_text("Bad-Key", "x", glue=put)


def test_claims_table_columns_and_rows():
    cs = [judge("rise", "Park & Kim 2022", "ViTs rise less", "Fig. 1a: +20 vs +12", ABOVE, "positive",
                unit="points"),
          not_testable("big", "Raghu et al. 2021", "s", "Fig. 3", "needs ImageNet")]
    t = claims.claims_table(cs)
    assert list(t.columns) == ["paper", "claim", "paper's figure", "ours", "test", "verdict"]
    assert list(t.index) == ["rise", "big"] and t.index.name == "key"
    assert t.loc["rise"].tolist() == ["Park & Kim 2022", "ViTs rise less", "Fig. 1a: +20 vs +12",
                                      "+1.32 [0.05, 2.59] points", "Welch t, df = 3.7, n = 6", "reproduced"]
    assert t.loc["big", "ours"] == "—" and t.loc["big", "test"] == "needs ImageNet"


def test_claim_checks_its_fields():
    with pytest.raises(ValueError, match="verdict must be one of"):
        claims.Claim("k", "p", "s", "f", ABOVE, "", "rule", "confirmed")
    with pytest.raises(ValueError, match="needs an estimate"):
        claims.Claim("k", "p", "s", "f", None, "", "rule", "reproduced")


def test_module_stays_free_of_torch_and_matplotlib():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(claims))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in getattr(n, "names", [])} | {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"torch", "matplotlib"}


def test_gluing_without_myst_nb_is_a_silent_no_op(monkeypatch):
    """On Colab MyST-NB is absent: gluing must neither fail nor need it installed."""
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # makes `import myst_nb` raise
    with pytest.raises(ModuleNotFoundError):
        import myst_nb  # noqa: F401
    claims.glue_number("x", 1.5, 2)
    claims.glue_text("y", "text")
    glued = claims.glue_claims([judge("k", "p", "s", "f", ABOVE, "positive")])
    assert glued["k_verdict"] == "reproduced"
