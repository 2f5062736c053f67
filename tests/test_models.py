"""Zoo architectures: shapes, sizes, errors, fused vs explicit attention, and real locality."""
import pytest
import torch

from lib.core import residual
from lib.core import models


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", models.MODELS)
def test_shapes_and_size(name, images):
    torch.manual_seed(0)
    model = models.build(name).eval()
    assert model(images).shape == (4, 10)
    assert 0.6e6 < models.count_parameters(model) < 1.3e6  # "about 1M parameters each"


@pytest.mark.parametrize("name", models.MODELS)
def test_other_input_shapes(name):
    """CIFAR-shaped inputs (3x32x32, 100 classes) build and run too."""
    model = models.build(name, in_chans=3, num_classes=100, img_size=32).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*resnet.*pit"):
        models.build("vgg")


@pytest.mark.parametrize("bad", [dict(in_chans=0), dict(num_classes=-1), dict(img_size=2.5),
                                 dict(mean=[0.1, 0.2]), dict(layout="CX,CC,CC")])
def test_bad_build_arguments(bad):
    with pytest.raises(ValueError):
        models.build("resnet", **bad)


def test_layout_only_for_convnets():
    with pytest.raises(ValueError, match="layout applies only"):
        models.build("vit", layout="CC,CM,CM")


def test_alternet_layout_places_msa_blocks():
    model = models.build("alternet")
    kinds = [b.kind for b in residual.units(model)]
    assert kinds == ["embed", "conv", "conv", "conv", "msa", "conv", "msa", "head"]
    start = models.build("resnet", layout="CC,MC,MC")  # MSA at the start of a stage (with stride)
    assert [b.kind for b in residual.units(start)][1:-1] == ["conv", "conv", "msa", "conv", "msa", "conv"]
    assert start(torch.rand(2, 1, 28, 28)).shape == (2, 10)



def test_an_msa_at_a_stage_start_subsamples_like_a_conv_block_and_keeps_the_parameter_count():
    """The placement ablation CC,MC,MC differs from AlterNet (CC,CM,CM) in placement only: its
    strided MSA blocks reduce resolution with a strided 3x3 convolution, as the convolution blocks
    do, and the two models have the same number of parameters within 2%."""
    start = models.build("alternet", layout="CC,MC,MC").net
    for stage, (in_chs, width) in ((1, (40, 80)), (2, (80, 160))):
        msa = start.stages[stage][0]
        assert isinstance(msa, models.MSABlock)
        assert msa.down.kernel_size == (3, 3) and msa.down.stride == (2, 2)
        conv = start.stages[stage][1]
        assert conv.conv1.kernel_size == (3, 3)  # the conv block that now ends the stage
        hidden = msa.down.out_channels
        assert hidden == models.strided_msa_hidden(in_chs, width, 7)
        assert hidden % models.MSA_HEAD_DIM == 0 and hidden <= models.MSA_EXPANSION * width
    end = models.build("alternet").net
    assert all(b.down.kernel_size == (1, 1) for s in end.stages for b in s if isinstance(b, models.MSABlock))
    n_start, n_end = models.count_parameters(start), models.count_parameters(end)
    assert abs(n_start - n_end) <= 0.02 * n_end
    x = torch.rand(2, 40, 28, 28)
    assert start.stages[1][0](x).shape == (2, 80, 14, 14)


def test_strided_msa_hidden_balances_the_swap_it_is_defined_by():
    """Direct check of the rule on stage 3: strided MSA + conv block against strided conv block +
    full-width MSA, and no other multiple of the head width comes closer."""
    from timm.layers import BatchNormAct2d, create_conv2d
    from timm.models.resnetv2 import DownsampleConv, PreActBasic

    def conv(cin, stride):
        return PreActBasic(cin, 160, stride=stride, conv_layer=create_conv2d, norm_layer=BatchNormAct2d,
                           proj_layer=DownsampleConv)

    def msa(cin, stride, hidden):
        return models.MSABlock(cin, 160, stride=stride, hidden=hidden, heads=hidden // 20, window=7)

    n = models.count_parameters
    target = n(conv(80, 2)) + n(msa(160, 1, 320))
    gaps = {h: abs(n(msa(80, 2, h)) + n(conv(160, 1)) - target) for h in range(20, 321, 20)}
    assert gaps[models.strided_msa_hidden(80, 160, 7)] == min(gaps.values())


@pytest.mark.parametrize("name", [name for name in models.MODELS if name != "resnet"])  # all with attention
def test_fused_and_explicit_attention_agree(name, images):
    torch.manual_seed(0)
    model = models.build(name).eval()
    assert all(not m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    explicit = model(images)
    models.use_fused_attention(model, True)
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    torch.testing.assert_close(model(images), explicit, atol=1e-5, rtol=1e-5)


def test_explicit_attention_has_double_backward(images):
    """Hessian-vector products need second derivatives through attention."""
    model = models.build("vit").eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(images).logsumexp(1).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    assert all(torch.isfinite(h).all() for h in hv)


def test_neighbourhood_mask():
    mask = models.neighbourhood_mask(grid=7, window=3)
    assert mask.shape == (50, 50)
    assert mask[0].all()                      # CLS sees everything
    assert not mask[1:, 0].any()              # patches do not see CLS
    assert mask[1:, 1:].sum(1).tolist()[:3] == [4, 6, 6]  # corner 2x2, edge 2x3
    centre = 1 + 3 * 7 + 3
    assert mask[centre, 1:].sum() == 9
    with pytest.raises(ValueError, match="odd"):
        models.neighbourhood_mask(7, 4)


def _first_msa_output(model, tokens):
    msa = residual.units(model)[1]
    assert msa.kind == "msa"
    return msa(tokens)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name,window", [("vit_local3", 3), ("vit_local5", 5)])
def test_local_attention_really_is_local(name, window, fused):
    """Perturbing a token outside a query's window leaves that query's output unchanged."""
    torch.manual_seed(0)
    model = models.use_fused_attention(models.build(name).eval(), fused)
    with torch.no_grad():
        tokens = residual.units(model)[0](torch.rand(2, 1, 28, 28))
        r = window // 2
        query = 1 + 3 * 7 + 3            # the centre patch (row 3, column 3); token 0 is CLS
        inside = query + r               # same row, last column inside the window
        outside = query + r + 1          # same row, first column past the window
        base = _first_msa_output(model, tokens)
        for token, should_change in ((outside, False), (inside, True), (0, False)):
            perturbed = tokens.clone()
            perturbed[:, token] += 5.0 * torch.randn_like(perturbed[:, token])
            out = _first_msa_output(model, perturbed)
            changed = not torch.equal(out[:, query], base[:, query])
            assert changed == should_change, f"token {token}"


def test_global_vit_is_not_local():
    torch.manual_seed(0)
    model = models.build("vit").eval()
    with torch.no_grad():
        tokens = residual.units(model)[0](torch.rand(2, 1, 28, 28))
        base = _first_msa_output(model, tokens)
        perturbed = tokens.clone()
        perturbed[:, 49] += 5.0 * torch.randn_like(perturbed[:, 49])  # the far corner patch
        assert not torch.allclose(_first_msa_output(model, perturbed)[:, 1], base[:, 1])


def test_layout_override_is_canonical():
    assert models.layout_override("alternet", "cc, cm ,cm") is None  # alternet's own layout
    assert models.layout_override("alternet", "CC,CC,CC") == "CC,CC,CC"
    assert models.layout_override("resnet", "CC,CC,CC") is None
    assert models.layout_override("vit", None) is None
    with pytest.raises(ValueError, match="layout applies only"):
        models.layout_override("pit", "CC,CM,CM")
    model = models.build("alternet", layout="CC,MC,MC", mean=[0.2], std=[0.3])
    assert model.build_kwargs == dict(in_chans=1, num_classes=10, img_size=28, mean=[0.2], std=[0.3],
                                      drop_path_rate=0.0, layout="CC,MC,MC")
    assert models.build("alternet", layout="CC,CM,CM").build_kwargs["layout"] is None
