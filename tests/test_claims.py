"""Claims, verdicts by a stated rule, the claims table and the glued strings."""
import sys

import numpy as np
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


# --- The rule with margins and Holm (decide) -------------------------------------------------------

def t_est(value, se, df=10, n=11):
    """A t estimate built as stats builds it (p against 0, standard error for other levels)."""
    return stats._t_estimate(value, se, df, 0.95, n, f"one-sample t, df = {df}")


def hyp(key, estimate, expect="positive", margin=0.5, **kw):
    kw = {"replicated_over": "training runs", "between_models": True, "unit": "points", **kw}
    return claims.Hypothesis(key, "Park & Kim 2022", "s", "f", estimate, expect, margin, "a reason", **kw)


@pytest.mark.parametrize("low, high, value, expect, verdict", [
    (0.6, 1.4, 1.0, "positive", "reproduced"),
    (0.1, 1.9, 1.0, "positive", "reproduced"),         # excludes 0, value beyond the margin
    (0.1, 0.45, 0.3, "positive", "no meaningful effect"),  # excludes 0 but inside ±0.5: too small to matter
    (-0.4, 0.4, 0.0, "positive", "no meaningful effect"),
    (0.1, 0.9, 0.4, "positive", "inconclusive"),       # excludes 0, value short of the margin, not inside
    (-0.2, 0.9, 0.35, "positive", "inconclusive"),
    (-1.4, -0.6, -1.0, "positive", "not reproduced"),
    (-1.4, -0.6, -1.0, "negative", "reproduced"),
    (0.6, 1.4, 1.0, "negative", "not reproduced"),
    (-0.5, 0.2, -0.1, "positive", "inconclusive"),     # touching −margin is not inside it
    (0.0, 1.0, 0.5, "positive", "inconclusive"),       # touching 0 does not exclude it
    (0.2, 0.8, 0.5, "positive", "reproduced"),         # reaching the margin counts
])
def test_verdict_with_margin_by_hand(low, high, value, expect, verdict):
    e = stats.Estimate(value, low, high, 0.95, 6, "t")
    assert claims.verdict_with_margin(e, expect, 0.5) == verdict


def test_decide_takes_each_interval_at_its_holm_level():
    strong, mid, weak = t_est(2.0, 0.2), t_est(1.0, 0.4), t_est(0.3, 0.4)
    testable = [hyp("weak", weak), hyp("strong", strong), hyp("mid", mid)]
    decided = claims.decide(testable[:1] + [not_testable("big", "p", "s", "f", "needs ImageNet")] + testable[1:])
    assert [c.key for c in decided] == ["weak", "big", "strong", "mid"]
    by_key = {c.key: c for c in decided}
    # p: strong < mid < weak; levels 1 - 0.05/3 and 1 - 0.05/2; weak fails 0.05/1 or not at all
    ps = [weak.p, strong.p, mid.p]
    levels = dict(zip(["weak", "strong", "mid"], stats.holm_levels(ps)))
    for key in ("weak", "strong", "mid"):
        assert by_key[key].estimate.level == pytest.approx(levels[key])
        assert by_key[key].adjustment == "Holm over 3 claims"
    assert levels["strong"] == pytest.approx(1 - 0.05 / 3) and levels["mid"] == pytest.approx(1 - 0.05 / 2)
    q = float(__import__("scipy").stats.t.ppf(1 - 0.05 / 6, 10))
    assert by_key["strong"].estimate.low == pytest.approx(2.0 - q * 0.2)
    assert by_key["strong"].verdict == "reproduced" and by_key["weak"].verdict == "inconclusive"
    assert by_key["big"].verdict == "not testable here"
    assert by_key["strong"].test == "one-sample t, df = 10, n = 11; 98.3% interval, Holm over 3 claims"
    assert by_key["strong"].smallest_effect == "±0.50 points (a reason)"
    assert by_key["strong"].rule == (
        "reproduced if the 98.3% interval (Holm over 3 claims) of the difference lies above 0 and the estimate "
        "reaches +0.50 points; no meaningful effect if the interval lies within ±0.50 points; not reproduced if it "
        "lies below 0 and the estimate reaches \u22120.50 points; inconclusive otherwise (one-sample t, df = 10, n = 11)")
    single = claims.decide([hyp("one", strong)])[0]
    assert single.estimate.level == pytest.approx(0.95) and single.adjustment == "a single claim, no adjustment"


def test_holm_turns_a_lone_success_into_inconclusive_in_a_family():
    # p about 0.03: reproduced alone at 95%, but not at the 1 - 0.05/4 of a family of four
    borderline = t_est(1.0, 0.4)
    assert claims.decide([hyp("alone", borderline)])[0].verdict == "reproduced"
    nulls = [hyp(f"null{i}", t_est(0.1, 1.0)) for i in range(3)]
    assert claims.decide([hyp("alone", borderline), *nulls])[0].verdict == "inconclusive"


def test_decide_glue_and_table_show_margin_and_level():
    decided = claims.decide([hyp("rise", t_est(2.0, 0.2)), hyp("fall", t_est(0.1, 0.05), margin=0.5)])
    recorded = {}
    glued = claims.glue_claims(decided, glue=lambda name, value, display: recorded.update({name: value}))
    assert glued["rise_margin"] == "±0.50 points" and glued["rise_level"] == "97.5%"
    # fall's p is above 0.05: Holm stops there and its interval stays at 95%, inside ±0.5
    assert glued["fall_level"] == "95%" and glued["fall_verdict"] == "no meaningful effect"
    table = claims.claims_table(decided + [not_testable("big", "p", "s", "f", "needs ImageNet")])
    assert list(table.columns) == ["paper", "claim", "paper's figure", "ours", "smallest effect that matters",
                                   "test", "verdict"]
    assert table.loc["big", "smallest effect that matters"] == "—"


def test_a_bootstrap_estimate_is_decided_at_its_holm_level():
    rng = np.random.default_rng(3)
    boot = stats.bootstrap(rng.normal(1.0, 1.0, 40), seed=0, rows="images")
    decided = claims.decide([hyp("b", boot, replicated_over="images", between_models=False),
                             hyp("t", t_est(0.1, 1.0))])
    b = decided[0].estimate
    assert b.level == pytest.approx(1 - 0.05 / 2)
    assert (b.low, b.high) == tuple(np.quantile(boot.draws, [0.05 / 4, 1 - 0.05 / 4]))


@pytest.mark.parametrize("kw, message", [
    ({"margin": 0.0}, r"margin .* must be a finite number > 0"),
    ({"margin": float("nan")}, r"must be a finite number > 0 in the estimate's unit, got nan"),
    ({"margin": True}, r"must be a finite number > 0 in the estimate's unit, got True"),
    ({"expect": "up"}, "expect must be one of"),
    ({"replicated_over": "seeds"}, r"replicated_over must be one of \("),
    ({"replicated_over": "images"}, "compares trained models, so its interval must be replicated over training runs"),
])
def test_hypothesis_refuses_what_the_rule_cannot_judge(kw, message):
    with pytest.raises(ValueError, match=message):
        hyp("k", t_est(1.0, 0.2), **kw)


def test_hypothesis_refuses_small_bootstraps_and_hand_built_estimates():
    boot = stats.bootstrap([0.1, 0.4, 0.2, 0.9, 0.5], seed=0, rows="mini-batches")
    with pytest.raises(ValueError, match="percentile bootstrap over 5 units is too coarse"):
        hyp("k", boot, replicated_over="mini-batches", between_models=False)
    with pytest.raises(ValueError, match="needs a p-value and a standard error"):
        hyp("k", stats.Estimate(1.0, 0.5, 1.5, 0.95, 6, "by hand", p=0.01))
    with pytest.raises(ValueError, match="say in one line why"):
        claims.Hypothesis("k", "p", "s", "f", t_est(1.0, 0.2), "positive", 0.5, " ", "training runs", True)
    with pytest.raises(ValueError, match=r"judged on its own \('reproduced'\)"):
        claims.decide([judge("k", "p", "s", "f", ABOVE, "positive")])
    with pytest.raises(ValueError, match=r"unique, repeated: \['k'\]"):
        claims.decide([hyp("k", t_est(1.0, 0.2)), hyp("k", t_est(1.0, 0.2))])


def test_a_claim_cannot_carry_a_verdict_its_estimate_contradicts():
    straddle = stats.Estimate(0.03, -2.45, 2.52, 0.95, 6, "t")
    with pytest.raises(ValueError, match=r"verdict 'reproduced' contradicts its estimate \+0.03 \[−2.45, 2.52\], "
                                         r"for which the rule gives 'within noise'"):
        claims.Claim("k", "p", "s", "f", straddle, "", "rule", "reproduced", expect="positive")
    with pytest.raises(ValueError, match="the rule gives 'inconclusive'"):
        claims.Claim("k", "p", "s", "f", straddle, "", "rule", "reproduced", expect="positive", margin=0.5,
                     margin_reason="r")


def test_glue_registry_records_every_claim_as_json():
    import json

    recorded = {}
    decided = claims.decide([hyp("rise", t_est(2.0, 0.2)), not_testable("big", "Raghu et al. 2021", "s", "f", "needs ImageNet")])
    records = claims.glue_registry(decided, glue=lambda name, value, display: recorded.update({name: (value, display)}))
    text, display = recorded[claims.REGISTRY]
    assert display is False and json.loads(text) == records
    assert [list(r) for r in records] == [list(claims.REGISTRY_FIELDS)] * 2
    assert records[0]["verdict"] == "reproduced" and records[0]["ours"] == decided[0].ours
    assert records[1] == {"key": "big", "paper": "Raghu et al. 2021", "claim": "s", "ours": "—",
                          "smallest effect that matters": "—", "test": "needs ImageNet", "verdict": "not testable here"}


def test_glue_family_glues_the_count_the_widest_level_and_the_error_rate():
    recorded = {}
    decided = claims.decide([hyp("rise", t_est(2.0, 0.2)), hyp("fall", t_est(0.1, 0.05)),
                             not_testable("big", "p", "s", "f", "needs ImageNet")])
    note = claims.glue_family(decided, glue=lambda name, value, display: recorded.update({name: value}))
    assert recorded == {"n_tested": "2", "widest_level": "97.5%", "family_error": "5%"}
    assert note == "2 claims tested together: intervals Holm-adjusted to a family-wise error of 5%"
    with pytest.raises(ValueError, match="at least one tested claim"):
        claims.glue_family(decided[2:], glue=lambda *a, **k: None)


def test_glue_seed_runs_states_the_runs_and_their_data():
    recorded = {}
    put = lambda name, value, display: recorded.update({name: value})  # noqa: E731
    assert claims.glue_seed_runs((0, 1, 2), 0.1, glue=put) == "on 10% of the data"
    assert recorded == {"n_runs": "3", "run_seeds": "0, 1 and 2", "run_regime": "on 10% of the data"}
    assert claims.glue_seed_runs([4], None, glue=put) == "on all of the data"
    assert recorded == {"n_runs": "1", "run_seeds": "4", "run_regime": "on all of the data"}
    assert claims.regime_text(0.25) == "on 25% of the data"
    for bad in (1.0, 0, "10%"):
        with pytest.raises(ValueError, match="subset must be None"):
            claims.regime_text(bad)
    with pytest.raises(ValueError, match="at least one seed"):
        claims.glue_seed_runs([], 0.1, glue=put)
