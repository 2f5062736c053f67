"""AlterNet's build rule as code: layout edits, the search, and turning a ResNet into an AlterNet."""
import pytest
import torch

from lib.core import models, residual
from lib.analyses import alternet


def test_replace_block_and_positions():
    assert alternet.replace_block("CC,CC,CC", 2, 1) == "CC,CC,CM"
    assert alternet.replace_block("cc,cc,cc", 1, -1) == "CC,CM,CC"
    assert alternet.replace_block("CC,CM,CM", 2, 1, kind="c") == "CC,CM,CC"
    assert alternet.msa_positions("CC,MC,CM") == [(1, 0), (2, 1)]
    assert alternet.msa_positions(models.RESNET_LAYOUT) == []


@pytest.mark.parametrize("args,match", [
    (("CC,CC,CC", 3, 0), "stage 3 does not exist.*0..2"),
    (("CC,CC,CC", 0, 2), "has 2 blocks: index 2 is not in 0..1"),
    (("CC,CX,CC", 0, 0), "bad layout 'CC,CX,CC'"),
])
def test_replace_block_errors(args, match):
    with pytest.raises(ValueError, match=match):
        alternet.replace_block(*args)
    with pytest.raises(ValueError, match="kind must be 'C'.*or 'M'.*'X'"):
        alternet.replace_block("CC", 0, 0, kind="X")


def _steps(scores, base=models.RESNET_LAYOUT, **kw):
    return [(s.layout, s.outcome) for s in alternet.build_rule(scores.get, base=base, **kw)]


def test_build_rule_keeps_helpful_msas_and_moves_to_earlier_stages():
    scores = {"CC,CC,CC": 80, "CC,CC,CM": 81, "CC,CM,CM": 82, "CM,CM,CM": 81.5}
    assert _steps(scores) == [("CC,CC,CC", "start"), ("CC,CC,CM", "kept"), ("CC,CM,CM", "kept"),
                              ("CM,CM,CM", "rejected")]


def test_build_rule_alternates_within_a_stage():
    # In a 4-block stage the rule tries the last block, then the second (C M C M), then moves on.
    scores = {"CC,CCCC": 1, "CC,CCCM": 2, "CC,CMCM": 3, "CM,CMCM": 2}
    assert _steps(scores, base="CC,CCCC") == [("CC,CCCC", "start"), ("CC,CCCM", "kept"),
                                              ("CC,CMCM", "kept"), ("CM,CMCM", "rejected")]


def test_build_rule_moves_a_rejected_msa_to_the_stage_before():
    scores = {"CC,CC,CC": 80, "CC,CC,CM": 79, "CC,CM,CC": 81, "CM,CM,CC": 80}
    assert _steps(scores) == [("CC,CC,CC", "start"), ("CC,CC,CM", "rejected"), ("CC,CM,CC", "kept"),
                              ("CM,CM,CC", "rejected")]


def test_build_rule_min_gain_and_unscored():
    scores = {"CC,CC,CC": 80, "CC,CC,CM": 80.2}
    assert _steps(scores, min_gain=0.5)[1] == ("CC,CC,CM", "rejected")
    steps = alternet.build_rule(scores.get)
    assert [s.outcome for s in steps] == ["start", "kept", "unscored"]
    assert steps[-1].layout == "CC,CM,CM" and steps[-1].score is None
    with pytest.raises(ValueError, match="no value for the base layout 'CC,CC,CC'"):
        alternet.build_rule({}.get)



def test_build_rule_compares_layouts_on_the_seeds_both_have():
    # The ResNet's three-seed mean (80) is below the candidate's single seed-0 run (80.5), but on
    # seed 0, the only seed in common, the ResNet is better (81): a matched rule rejects the MSA.
    scores = {"CC,CC,CC": {0: 81.0, 1: 79.5, 2: 79.5}, "CC,CC,CM": {0: 80.5},
              "CC,CM,CC": {0: 81.4, 1: 79.6}, "CM,CM,CC": {2: 90.0}}
    steps = alternet.build_rule(scores.get)
    assert [(s.layout, s.outcome) for s in steps] == [
        ("CC,CC,CC", "start"), ("CC,CC,CM", "rejected"), ("CC,CM,CC", "kept"), ("CM,CM,CC", "unscored")]
    assert steps[0].score == pytest.approx(80.0)
    assert steps[1].gain == pytest.approx(-0.5) and steps[1].seeds == (0,)
    assert steps[2].gain == pytest.approx((81.4 + 79.6) / 2 - (81.0 + 79.5) / 2) and steps[2].seeds == (0, 1)
    assert "no seed in common" in steps[3].reason  # seed 2 only: nothing to compare with
    assert alternet.selected(steps) == "CC,CM,CC"
    with pytest.raises(ValueError, match="NaN for layout 'CC,CC,CM'"):
        alternet.build_rule({"CC,CC,CC": 1.0, "CC,CC,CM": {0: float("nan")}}.get)


def _trained_looking(model):
    """Non-trivial BatchNorm statistics, so that copying them matters."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def test_from_resnet_is_the_resnet_without_the_replaced_branches():
    torch.manual_seed(0)
    resnet = _trained_looking(models.build("resnet", mean=[0.3], std=[0.4]))
    new = alternet.from_resnet(resnet, "CC,CM,CM")
    assert new.arch == "alternet" and new.net.layout == "CC,CM,CM"
    assert new.build_kwargs["mean"] == [0.3]
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        h = x
        for unit in residual.units(resnet):
            if unit.name in ("stage2.1.conv", "stage3.1.conv"):
                assert unit.residual  # an identity shortcut: removing the branch = skipping the unit
                continue
            h = unit(h)
        out = new(x)
        assert torch.allclose(out, h, atol=1e-6)
        assert not torch.allclose(out, resnet(x), atol=1e-3)  # the replaced branches did matter
        # Without the identity start the new blocks change the function.
        assert not torch.allclose(alternet.from_resnet(resnet, "CC,CM,CM", identity_init=False)(x), h, atol=1e-3)
    kept = dict(resnet.named_parameters())
    for name, p in new.named_parameters():
        if name.startswith(("net.stem", "net.head", "net.stages.0.", "net.stages.1.0.", "net.stages.2.0.")):
            assert torch.equal(p, kept[name]), name


def test_from_resnet_is_seeded_and_leaves_the_global_rng_alone():
    resnet = models.build("resnet").eval()
    torch.manual_seed(7)
    a = alternet.from_resnet(resnet, "CC,MC,MC", seed=3)
    after = torch.rand(1)
    torch.manual_seed(7)
    b = alternet.from_resnet(resnet, "CC,MC,MC", seed=3)
    assert torch.equal(torch.rand(1), after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = alternet.from_resnet(resnet, "CC,MC,MC", seed=4)
    assert not torch.equal(a.net.stages[1][0].attn.qkv.weight, c.net.stages[1][0].attn.qkv.weight)
    # The projection shortcut of a stage's first block is carried over.
    assert torch.equal(a.net.stages[1][0].downsample.conv.weight, resnet.net.stages[1][0].downsample.conv.weight)


def test_from_resnet_turns_msa_back_into_conv_and_checks_its_input():
    source = models.build("alternet").eval()
    back = alternet.from_resnet(source, models.RESNET_LAYOUT)
    assert alternet.msa_positions(back.net.layout) == []
    with pytest.raises(ValueError, match="must have the blocks per stage of 'CC,CM,CM'"):
        alternet.from_resnet(source, "CCC,CC,CC")
    with pytest.raises(TypeError, match="needs a zoo 'resnet' or 'alternet'.*'vit'"):
        alternet.from_resnet(models.build("vit"), "CC,CM,CM")
