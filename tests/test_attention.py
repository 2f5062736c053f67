"""lib.analyses.attention: attention maps, distances and ring strength against brute-force and hand-made
answers, rollout against hand products, head masking against zeroed output-projection weights,
head importance and the gradient proxy against independent forward passes and autograd, pruning,
k-means and the pattern vocabulary."""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core import blocks, models
from lib.analyses import attention
from lib.core.blocks import UnitInfo

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION_MODELS = ("vit", "vit_local3", "vit_local5", "pit", "alternet")
UNIFORM_7x7_PX4 = 14.437861767102046  # the mean distance of two uniform positions on 7x7 patches of 4 px


# --- helpers -------------------------------------------------------------------------------------

def build(name: str, seed: int = 0) -> models.Classifier:
    torch.manual_seed(seed)
    return models.build(name).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(10, (n,), generator=torch.Generator().manual_seed(seed))


def hand_maps(probs: torch.Tensor, cls: bool = True, windowed: bool = False, pixels: int = 4,
              name: str = "hand") -> attention.AttentionMaps:
    info = UnitInfo(0, name, "msa", 0, 0.0, True)
    unit = attention.AttentionUnit(info, nn.Identity(), probs.shape[2], pixels, cls=cls, windowed=windowed)
    return attention.AttentionMaps(unit, probs)


def random_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random distributions along the last axis (float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).mul(2).softmax(dim=-1)


def fused_flags(model: nn.Module) -> list[bool]:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


def zero_head_columns(model: nn.Module, unit: int, head: int) -> None:
    """Zero the output-projection input columns that head ``head`` of attention unit ``unit`` feeds."""
    u = attention.attention_units(model)[unit]
    hd = u.module.proj.weight.shape[1] // u.heads
    with torch.no_grad():
        u.module.proj.weight[:, head * hd:(head + 1) * hd] = 0


def param_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


# --- 1. uniform distance -------------------------------------------------------------------------

def test_uniform_distance_matches_brute_force_over_all_pairs():
    """uniform_distance(7, 4) is the mean hypot distance over all 49² ordered position pairs, times 4."""
    total = 0.0
    for r1, c1, r2, c2 in itertools.product(range(7), repeat=4):
        total += math.hypot(r1 - r2, c1 - c2)
    expected = total * 4 / 49 ** 2
    assert attention.uniform_distance(7, 4) == pytest.approx(expected, rel=1e-12)
    assert attention.uniform_distance(7, 4) == pytest.approx(14.4379, abs=0.01)
    assert attention.uniform_distance(1, 4) == 0.0


@pytest.mark.parametrize("window", [1, 3, 5, 7, 13])
def test_uniform_distance_inside_a_window_matches_brute_force(window):
    """uniform_distance(7, 4, window=k): each query averages over its k x k neighbourhood (fewer keys at borders)."""
    half, per_query = window // 2, []
    for r1, c1 in itertools.product(range(7), repeat=2):
        near = [math.hypot(r1 - r2, c1 - c2) for r2, c2 in itertools.product(range(7), repeat=2)
                if max(abs(r1 - r2), abs(c1 - c2)) <= half]
        per_query.append(4 * sum(near) / len(near))
    assert attention.uniform_distance(7, 4, window=window) == pytest.approx(sum(per_query) / 49, rel=1e-12)
    if window >= 13:
        assert attention.uniform_distance(7, 4, window=window) == pytest.approx(attention.uniform_distance(7, 4),
                                                                                rel=1e-12)


@pytest.mark.parametrize("window", [0, 2, -3])
def test_uniform_distance_rejects_even_or_non_positive_windows(window):
    """An even or non-positive window raises ValueError."""
    with pytest.raises(ValueError, match="positive odd integer"):
        attention.uniform_distance(7, 4, window=window)


@pytest.mark.parametrize("window", [3, 5])
def test_uniform_attention_inside_the_local_mask_gives_the_windowed_uniform_distance(window):
    """Patch queries spreading evenly over their allowed keys (neighbourhood_mask): uniform_distance(window=k)."""
    allowed = models.neighbourhood_mask(7, window).double()
    probs = (allowed / allowed.sum(-1, keepdim=True)).expand(1, 1, 2, 50, 50).clone()
    dist, cls_mass = attention.mean_distance(hand_maps(probs))
    np.testing.assert_allclose(dist, attention.uniform_distance(7, 4, window=window), rtol=1e-12)
    np.testing.assert_array_equal(cls_mass, 0.0)


# --- 2. uniform attention ------------------------------------------------------------------------

def test_uniform_attention_distance_cls_mass_and_flat_rings():
    """Uniform attention over CLS + 49 patches: uniform distance per head, CLS mass 1/50, rings at 1/49."""
    b, h = 2, 3
    maps = hand_maps(torch.full((b, 1, h, 50, 50), 1 / 50, dtype=torch.float64))
    assert maps.grid == 7
    dist, cls_mass = attention.mean_distance(maps)
    assert dist.shape == cls_mass.shape == (b, h)
    np.testing.assert_allclose(dist, attention.uniform_distance(7, 4), rtol=1e-12)
    np.testing.assert_allclose(cls_mass, 1 / 50, rtol=1e-12)
    strength = attention.ring_strength(maps)
    assert strength.shape == (b, h, 7)
    np.testing.assert_allclose(strength, 1 / 49, rtol=1e-12)


# --- 3. one-hot attention ------------------------------------------------------------------------

OFFSETS = [[(1, 2), (-3, 0), (0, 0)], [(2, 1), (0, -1), (-6, -6)]]  # per image, per head


def one_hot_probs() -> torch.Tensor:
    b, h = len(OFFSETS), len(OFFSETS[0])
    p = torch.zeros(b, 1, h, 50, 50, dtype=torch.float64)
    p[..., 0, :] = 1 / 50  # the CLS query: anything
    for i, j in itertools.product(range(b), range(h)):
        dr, dc = OFFSETS[i][j]
        for r, c in itertools.product(range(7), range(7)):
            tr, tc = r + dr, c + dc
            if not (0 <= tr < 7 and 0 <= tc < 7):
                tr, tc = r, c
            p[i, 0, j, 1 + 7 * r + c, 1 + 7 * tr + tc] = 1.0
    return p


def test_one_hot_attention_at_known_offsets():
    """Every patch query attending to one patch at a known offset (or itself): exact mean distance and rings."""
    maps = hand_maps(one_hot_probs())
    dist, cls_mass = attention.mean_distance(maps)
    strength = attention.ring_strength(maps)
    for i, j in itertools.product(range(len(OFFSETS)), range(len(OFFSETS[0]))):
        dr, dc = OFFSETS[i][j]
        total, at_ring = 0.0, [0] * 7
        for r, c in itertools.product(range(7), range(7)):
            if 0 <= r + dr < 7 and 0 <= c + dc < 7:
                total += 4 * math.hypot(dr, dc)
                at_ring[max(abs(dr), abs(dc))] += 1
            else:
                at_ring[0] += 1
        assert dist[i, j] == pytest.approx(total / 49, abs=1e-12), (i, j)
        assert cls_mass[i, j] == 0.0
        pairs = [sum(max(abs(r1 - r2), abs(c1 - c2)) == ring
                     for r1, c1, r2, c2 in itertools.product(range(7), repeat=4)) for ring in range(7)]
        np.testing.assert_allclose(strength[i, j], np.array(at_ring) / np.array(pairs), atol=1e-12)
    # (+1, +2): 6 x 5 queries have the target, at 4·√5 px
    assert dist[0, 0] == pytest.approx(30 * 4 * math.sqrt(5) / 49, abs=1e-12)
    assert dist[0, 2] == 0.0  # head 2 of image 0 attends to itself


@pytest.mark.parametrize("pixels", [1, 2, 8])
def test_mean_distance_scales_with_the_unit_pixels(pixels):
    """The same attention on tokens of p pixels gives p/4 times the distance on 4-pixel tokens."""
    at4, _ = attention.mean_distance(hand_maps(one_hot_probs(), pixels=4))
    atp, _ = attention.mean_distance(hand_maps(one_hot_probs(), pixels=pixels))
    np.testing.assert_allclose(atp, at4 * pixels / 4, rtol=1e-12)
    assert atp[0, 0] == pytest.approx(30 * pixels * math.sqrt(5) / 49, abs=1e-12)


def test_one_hot_far_corner_offset_value():
    """Offset (-6, -6) exists only for the bottom-right query: mean distance 4·6√2/49."""
    dist, _ = attention.mean_distance(hand_maps(one_hot_probs()))
    assert dist[1, 2] == pytest.approx(4 * 6 * math.sqrt(2) / 49, abs=1e-12)


def test_query_attending_only_to_cls_raises():
    """A patch query with all its mass on CLS has no patch distance: patch_attention raises ValueError."""
    p = one_hot_probs()
    p[1, 0, 2, 17, :] = 0.0
    p[1, 0, 2, 17, 0] = 1.0
    with pytest.raises(ValueError, match="attends only to CLS"):
        attention.patch_attention(hand_maps(p))
    with pytest.raises(ValueError, match="attends only to CLS"):
        attention.mean_distance(hand_maps(p))


# --- 4. CLS handling -----------------------------------------------------------------------------

@pytest.mark.parametrize("varying", [False, True])
def test_cls_mass_is_set_apart_and_rows_renormalised(varying):
    """Patch queries giving mass m to CLS and (1 - m)·d to patches: distance as for d alone, cls_mass = mean m."""
    b, h = 2, 3
    d = random_rows(b, 1, h, 49, 49, seed=3)
    if varying:
        m = torch.rand(b, 1, h, 49, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.8 + 0.1
    else:
        m = torch.full((b, 1, h, 49), 0.5, dtype=torch.float64)
    p = torch.zeros(b, 1, h, 50, 50, dtype=torch.float64)
    p[..., 0, :] = 1 / 50
    p[..., 1:, 0] = m
    p[..., 1:, 1:] = (1 - m)[..., None] * d
    dist, cls_mass = attention.mean_distance(hand_maps(p))
    plain, plain_cls = attention.mean_distance(hand_maps(d, cls=False))
    np.testing.assert_allclose(dist, plain, rtol=1e-12)
    np.testing.assert_array_equal(plain_cls, 0.0)
    np.testing.assert_allclose(cls_mass, m.mean(dim=(1, 3)).numpy(), rtol=1e-12)
    if not varying:
        np.testing.assert_allclose(cls_mass, 0.5, rtol=1e-12)
    # independent: Σ_k d[q, k] · 4 ‖g_q − g_k‖ averaged over queries
    pos = [(q // 7, q % 7) for q in range(49)]
    dist_px = torch.tensor([[4 * math.hypot(a[0] - c[0], a[1] - c[1]) for c in pos] for a in pos], dtype=torch.float64)
    expected = (d[:, 0] * dist_px).sum(-1).mean(-1).numpy()
    np.testing.assert_allclose(dist, expected, rtol=1e-12)
    np.testing.assert_allclose(attention.ring_strength(hand_maps(p)), attention.ring_strength(hand_maps(d, cls=False)),
                               rtol=1e-12)


# --- 5. rollout ----------------------------------------------------------------------------------

def test_rollout_of_identity_attention_is_identity():
    """Identity attention in every head of every unit rolls out to the identity."""
    eye = torch.eye(50, dtype=torch.float64).expand(2, 1, 4, 50, 50).clone()
    r = attention.rollout([hand_maps(eye), hand_maps(eye), hand_maps(eye)])
    assert r.shape == (2, 50, 50)
    torch.testing.assert_close(r, torch.eye(50, dtype=torch.float64).expand(2, 50, 50), rtol=0, atol=1e-15)


def test_rollout_of_two_units_is_the_hand_product():
    """Two units: rollout = M2 @ M1 with M = (mean over heads A + I) / 2 (later unit on the left)."""
    a1, a2 = random_rows(2, 1, 3, 10, 10, seed=1), random_rows(2, 1, 3, 10, 10, seed=2)
    eye = torch.eye(10, dtype=torch.float64)
    expected = torch.zeros(2, 10, 10, dtype=torch.float64)
    for b in range(2):
        m1 = (sum(a1[b, 0, h] for h in range(3)) / 3 + eye) / 2
        m2 = (sum(a2[b, 0, h] for h in range(3)) / 3 + eye) / 2
        expected[b] = m2 @ m1
    got = attention.rollout([hand_maps(a1, pixels=1), hand_maps(a2, pixels=1)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(got, expected.transpose(-1, -2))  # the order matters for these matrices
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 10, dtype=torch.float64))
    cls = attention.cls_rollout([hand_maps(a1, pixels=1), hand_maps(a2, pixels=1)])
    torch.testing.assert_close(cls, expected[:, 0, 1:].reshape(2, 3, 3))


def test_rollout_refuses_windows_and_changing_sequences():
    """rollout raises ValueError on windowed units (AlterNet), pooled sequences (PiT) and no maps."""
    x = images(2)
    for name in ("alternet", "pit"):
        maps, _ = attention.attention_maps(build(name), x)
        with pytest.raises(ValueError, match="global attention over one token sequence"):
            attention.rollout(maps)
    eye = torch.eye(49, dtype=torch.float64).expand(1, 1, 2, 49, 49).clone()
    with pytest.raises(ValueError, match="global attention"):
        attention.rollout([hand_maps(eye, cls=False, windowed=True)])
    with pytest.raises(ValueError):
        attention.rollout([])
    with pytest.raises(ValueError, match="CLS"):
        attention.cls_rollout([hand_maps(eye, cls=False)])


# --- 6. attention_maps on the zoo ----------------------------------------------------------------

EXPECTED_SHAPES = {
    "vit": [(1, 8, 50, 50)] * 6,
    "vit_local3": [(1, 8, 50, 50)] * 6,
    "vit_local5": [(1, 8, 50, 50)] * 6,
    "pit": [(1, 2, 197, 197)] * 2 + [(1, 4, 50, 50)] * 4 + [(1, 8, 17, 17)] * 2,
    "alternet": [(4, 8, 49, 49), (1, 16, 49, 49)],
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_attention_maps_logits_shapes_rows_and_restored_switch(name, fused):
    """attention_maps: logits equal model(x) on either path, switch and outputs unchanged, rows sum to 1, shapes."""
    model = models.set_fused_attn(build(name), fused)
    x = images(3)
    with torch.no_grad():
        before = model(x)
    maps, logits = attention.attention_maps(model, x)
    assert fused_flags(model) and all(f is fused for f in fused_flags(model))
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert logits.dtype == torch.float32 and logits.shape == (3, 10)
    assert torch.allclose(logits, before, atol=1e-5), (logits - before).abs().max()
    assert [tuple(m.probs.shape) for m in maps] == [(3, *s) for s in EXPECTED_SHAPES[name]]
    for m in maps:
        assert m.probs.dtype == torch.float32 and m.probs.device.type == "cpu"
        assert (m.probs >= 0).all()
        torch.testing.assert_close(m.probs.sum(-1), torch.ones(m.probs.shape[:-1]), rtol=0, atol=1e-5)
    assert [m.name for m in maps] == [u.name for u in attention.attention_units(model)]


def test_attention_maps_restores_training_mode():
    """A model in training mode is back in training mode after attention_maps (eval inside)."""
    model = build("vit").train()
    attention.attention_maps(model, images(2))
    assert model.training
    model.eval()
    attention.attention_maps(model, images(2))
    assert not model.training


def test_vit_first_unit_maps_are_the_softmax_of_its_queries_and_keys():
    """vit block0: captured probs equal softmax(q kᵀ · scale) recomputed from the embedding by hand."""
    model = build("vit")
    x = images(2)
    maps, _ = attention.attention_maps(model, x)
    units = blocks.blocks(model)
    with torch.no_grad():
        tokens = units[0](x)
        attn = model.net.blocks[0].attn
        n = model.net.blocks[0].norm1(tokens)
        qkv = attn.qkv(n).reshape(2, 50, 3, 8, 16).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        expected = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)
    torch.testing.assert_close(maps[0].probs[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_alternet_window_maps_follow_the_window_order():
    """alternet stage2: window w = 2·(row block) + (column block) of the 14x14 map, recomputed by hand."""
    model = build("alternet")
    x = images(2)
    maps, _ = attention.attention_maps(model, x)
    all_units = blocks.blocks(model)
    unit = attention.attention_units(model)[0]
    block = all_units[unit.index].module.block
    with torch.no_grad():
        stream = blocks.run_blocks(all_units[:unit.index], x)
        y = block.down(block.norm(stream))  # (2, C, 14, 14)
        assert y.shape[-2:] == (14, 14)
        wa = block.attn
        heads, c = wa.num_heads, y.shape[1]
        hd = c // heads
        bias = wa._get_rel_pos_bias()[0]  # (heads, 49, 49)
        for wr, wc in itertools.product(range(2), range(2)):
            tokens = y[:, :, 7 * wr:7 * wr + 7, 7 * wc:7 * wc + 7].flatten(2).transpose(1, 2)  # (2, 49, C)
            qkv = wa.qkv(tokens).reshape(2, 49, 3, heads, hd).permute(2, 0, 3, 1, 4)
            expected = ((qkv[0] @ qkv[1].transpose(-1, -2)) / math.sqrt(hd) + bias).softmax(-1)
            torch.testing.assert_close(maps[0].probs[:, 2 * wr + wc], expected, rtol=1e-5, atol=1e-6)


# --- 7. local ViTs -------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name,window", [("vit_local3", 3), ("vit_local5", 5)])
def test_local_vits_attend_only_inside_their_neighbourhood(name, window, fused):
    """Patch queries of the local ViTs give exactly 0 to keys outside k x k and to CLS; the CLS query sees all."""
    model = models.set_fused_attn(build(name), fused)
    maps, _ = attention.attention_maps(model, images(2))
    allowed = models.neighbourhood_mask(7, window)
    for m in maps:
        outside = m.probs[..., ~allowed]
        assert outside.numel() > 0 and torch.equal(outside, torch.zeros_like(outside)), m.name
        assert (m.probs[..., 0, :] > 0).all()  # the CLS query attends everywhere
        assert (m.probs[..., 1:, 0] == 0).all()
        _, cls_mass = attention.mean_distance(m)
        np.testing.assert_array_equal(cls_mass, 0.0)
        # distances stay within the window: at most the corner of the neighbourhood
        dist, _ = attention.mean_distance(m)
        assert (dist <= 4 * math.hypot(window // 2, window // 2) + 1e-9).all()
        assert (attention.ring_strength(m)[..., window // 2 + 1:] == 0).all()
    assert all(f is fused for f in fused_flags(model))


# --- 8. head masking -----------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_masking_a_head_with_zero_projection_changes_nothing(fused):
    """A head whose proj columns are zero: masking it leaves the logits; masking another changes them."""
    model = build("vit")
    zero_head_columns(model, 2, 5)
    models.set_fused_attn(model, fused)
    x = images(4)
    with torch.no_grad():
        clean = model(x)
        with attention.masked_heads(model, [(2, 5)]):
            masked = model(x)
        with attention.masked_heads(model, [(2, 4)]):
            other = model(x)
        again = model(x)
    torch.testing.assert_close(masked, clean, rtol=0, atol=1e-6)
    assert (other - clean).abs().max() > 1e-4
    assert torch.equal(again, clean)
    for u in attention.attention_units(model):
        assert len(u.module.proj._forward_pre_hooks) == 0


def test_masked_heads_removes_hooks_after_an_error():
    """The hooks go even when the body raises."""
    model = build("vit")
    with pytest.raises(RuntimeError, match="boom"):
        with attention.masked_heads(model, [(0, 0), (3, 7)]):
            raise RuntimeError("boom")
    assert all(len(u.module.proj._forward_pre_hooks) == 0 for u in attention.attention_units(model))


@pytest.mark.parametrize("heads,match", [
    ([(6, 0)], r"units 0\.\.5"),
    ([(-1, 0)], r"units 0\.\.5"),
    ([(0, 8)], r"heads 0\.\.7, got head 8"),
    ([(1, -1)], r"heads 0\.\.7"),
])
def test_masked_heads_rejects_bad_units_and_heads(heads, match):
    """Invalid unit or head: ValueError naming the valid range."""
    model = build("vit")
    with pytest.raises(ValueError, match=match):
        with attention.masked_heads(model, heads):
            pass


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("unit,heads", [(0, [3]), (0, [0, 7]), (1, [15]), (1, [2, 9, 10])])
def test_masking_equals_zeroing_projection_columns_in_alternet(unit, heads, fused):
    """AlterNet's windowed units: masked_heads gives the logits of a copy with those proj columns zeroed."""
    model = models.set_fused_attn(build("alternet"), fused)
    zeroed = copy.deepcopy(model)
    for h in heads:
        zero_head_columns(zeroed, unit, h)
    x = images(2)
    with torch.no_grad():
        with attention.masked_heads(model, [(unit, h) for h in heads]):
            masked = model(x)
        expected = zeroed(x)
        clean = model(x)
    torch.testing.assert_close(masked, expected, rtol=0, atol=1e-5)
    assert (masked - clean).abs().max() > 1e-5


# --- 9. head importance --------------------------------------------------------------------------

def test_head_importance_matches_independent_masked_forward_passes():
    """loss_rise and correct_drop equal per-image CE / correctness with proj columns zeroed minus clean."""
    model = build("vit")
    zero_head_columns(model, 3, 5)
    x, y = images(6), labels(6)
    hi = attention.head_importance(model, x, y, batch_size=4)
    assert hi.n_images == 6
    assert hi.matrix().shape == hi.matrix("accuracy").shape == hi.se().shape == (6, 8)
    assert [a.shape for a in hi.loss_rise] == [(6, 8)] * 6
    assert hi.per_image().shape == (6, 48) and hi.heads()[9] == (1, 1)
    with torch.no_grad():
        clean = model(x)
    np.testing.assert_allclose(hi.clean_loss, F.cross_entropy(clean, y, reduction="none").numpy(), atol=1e-5)
    np.testing.assert_array_equal(hi.clean_correct, (clean.argmax(1) == y).double().numpy())
    for u, h in [(0, 0), (2, 6), (5, 3)]:
        zeroed = copy.deepcopy(model)
        zero_head_columns(zeroed, u, h)
        with torch.no_grad():
            masked = zeroed(x)
        rise = F.cross_entropy(masked, y, reduction="none") - F.cross_entropy(clean, y, reduction="none")
        np.testing.assert_allclose(hi.loss_rise[u][:, h], rise.numpy(), atol=1e-5)
        drop = (clean.argmax(1) == y).double() - (masked.argmax(1) == y).double()
        np.testing.assert_array_equal(hi.correct_drop[u][:, h], drop.numpy())
        assert np.abs(hi.loss_rise[u][:, h]).max() > 1e-6
    for arr in hi.correct_drop:
        assert set(np.unique(arr)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(hi.loss_rise[3][:, 5], 0.0, atol=1e-6)
    np.testing.assert_array_equal(hi.correct_drop[3][:, 5], 0.0)
    np.testing.assert_allclose(hi.matrix(), np.stack([a.mean(0) for a in hi.loss_rise]), rtol=1e-12)
    with pytest.raises(ValueError, match="same number of images"):
        attention.head_importance(model, x, y[:5])
    with pytest.raises(ValueError, match="'loss' or 'accuracy'"):
        hi.matrix("bogus")


def test_head_importance_on_alternet_has_one_array_per_unit():
    """AlterNet (8 and 16 heads): per-unit arrays, matrix refuses mixed head counts."""
    model = build("alternet")
    x, y = images(2), labels(2)
    hi = attention.head_importance(model, x, y)
    assert [a.shape for a in hi.loss_rise] == [(2, 8), (2, 16)]
    with pytest.raises(ValueError, match="different numbers of heads"):
        hi.matrix()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        with attention.masked_heads(model, [(1, 11)]):
            masked = F.cross_entropy(model(x), y, reduction="none")
    np.testing.assert_allclose(hi.loss_rise[1][:, 11], (masked - clean).numpy(), atol=1e-5)


# --- 10. gradient importance ---------------------------------------------------------------------

def scaled_weight_gradient(model: nn.Module, unit: int, head: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """dL/dξ at ξ = 1 where proj.weight[:, head columns] is scaled by ξ (one image's cross-entropy)."""
    u = attention.attention_units(model)[unit]
    proj = u.module.proj
    hd = proj.weight.shape[1] // u.heads
    xi = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    scale = torch.ones(proj.weight.shape[1], dtype=torch.float64)
    sel = torch.zeros(proj.weight.shape[1], dtype=torch.float64)
    sel[head * hd:(head + 1) * hd] = 1
    w = proj.weight.detach() * (scale + (xi - 1) * sel).float()
    logits = torch.func.functional_call(model, {param_name(model, proj) + ".weight": w}, (x,))
    loss = F.cross_entropy(logits, y)
    (g,) = torch.autograd.grad(loss, xi)
    return float(g)


@pytest.mark.parametrize("name,cases", [("vit", [(0, 1), (3, 6), (5, 0)]), ("alternet", [(0, 2), (1, 13)])])
def test_gradient_importance_matches_autograd_on_scaled_projection(name, cases):
    """|∂L/∂ξ| per image equals autograd through proj columns scaled by ξ; shapes (n, heads)."""
    model = build(name)
    zero_head_columns(model, 1, 4)
    x, y = images(2, seed=5), labels(2, seed=5)
    grads = attention.gradient_importance(model, x, y, batch_size=1)
    units = attention.attention_units(model)
    assert [g.shape for g in grads] == [(2, u.heads) for u in units]
    for u, h in cases:
        for i in range(2):
            expected = abs(scaled_weight_gradient(model, u, h, x[i:i + 1], y[i:i + 1]))
            assert grads[u][i, h] == pytest.approx(expected, rel=1e-4, abs=1e-8), (u, h, i)
            assert expected > 1e-6
    np.testing.assert_array_equal(grads[1][:, 4], 0.0)
    both = attention.gradient_importance(model, x, y, batch_size=2)
    for a, b in zip(grads, both):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)
    assert all(len(u.module.proj._forward_pre_hooks) == 0 for u in units)


# --- 11. pruning ---------------------------------------------------------------------------------

def test_pruning_order_sorts_ascending_with_ties_by_unit_and_head():
    """Scores ascending; equal scores in (unit, head) order; a 2-D array works like a list of rows."""
    scores = [np.array([0.3, 0.1, 0.2]), np.array([0.1, 0.05, 0.3])]
    expected = [(1, 1), (0, 1), (1, 0), (0, 2), (0, 0), (1, 2)]
    assert attention.pruning_order(scores) == expected
    assert attention.pruning_order(np.stack(scores)) == expected
    assert attention.pruning_order([np.zeros(2), np.zeros(3)]) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_pruning_curve_matches_independent_masked_runs():
    """Step 0 is the clean correctness; step k is the correctness with order[:k] masked."""
    model = build("vit")
    x, y = images(8, seed=2), labels(8, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)  # make the clean model right everywhere, so masking has something to break
        y[::3] = (y[::3] + 1) % 10
    scores = np.random.default_rng(0).random((6, 8))
    order = attention.pruning_order(scores)
    steps = [0, 1, 10, 30, 48]
    curve = attention.pruning_curve(model, x, y, order, steps, batch_size=3)
    assert curve.correct.shape == (5, 8) and curve.order == order
    np.testing.assert_array_equal(curve.n_masked, steps)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double().numpy()
    np.testing.assert_array_equal(curve.correct[0], clean)
    for i, k in enumerate(steps):
        with torch.no_grad(), attention.masked_heads(model, order[:k]):
            ok = (model(x).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(curve.correct[i], ok)
    np.testing.assert_allclose(curve.accuracy, curve.correct.mean(1) * 100)
    for bad in ([-1], [49], [0, 50]):
        with pytest.raises(ValueError, match=r"steps must lie in \[0, 48\]"):
            attention.pruning_curve(model, x, y, order, bad)
    with pytest.raises(ValueError, match="heads 0..7"):
        attention.pruning_curve(model, x, y, [(0, 9)], [1])


# --- 12. k-means, autoencoder, patterns ----------------------------------------------------------

def blobs(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 0.0, 80.0]], dtype=torch.float64)
    truth = torch.randint(3, (60,), generator=g)
    truth[:3] = torch.arange(3)
    z = centres[truth] + torch.randn(60, 3, generator=g, dtype=torch.float64)
    return z, truth.numpy()


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    """Three far-apart blobs: labels equal to the truth up to a permutation, centroids the blob means."""
    z, truth = blobs()
    centroids, lab = attention.kmeans(z, 3, seed=1)
    lab = lab.numpy()
    perm = {int(t): int(lab[truth == t][0]) for t in range(3)}
    assert sorted(perm.values()) == [0, 1, 2]
    np.testing.assert_array_equal(lab, np.array([perm[int(t)] for t in truth]))
    for t in range(3):
        torch.testing.assert_close(centroids[perm[t]], z[torch.from_numpy(truth == t)].mean(0), rtol=1e-12, atol=1e-12)
    again_c, again_l = attention.kmeans(z, 3, seed=1)
    assert torch.equal(again_c, centroids) and np.array_equal(again_l.numpy(), lab)
    for seed in range(5):  # any start finds these blobs
        _, l2 = attention.kmeans(z, 3, seed=seed)
        assert len({(int(a), int(b)) for a, b in zip(truth, l2)}) == 3


@pytest.mark.parametrize("k", [0, 61, 2.0, True, -1])
def test_kmeans_rejects_bad_k(k):
    """k must be a whole number in [1, number of points]."""
    z, _ = blobs()
    with pytest.raises(ValueError, match=r"k must be a whole number in \[1, 60\]"):
        attention.kmeans(z, k)


def test_kmeans_with_k_equal_to_the_number_of_points():
    """k = M distinct points: every point its own cluster."""
    z = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    centroids, lab = attention.kmeans(z, 4)
    assert sorted(lab.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(centroids[lab], z)


def test_fit_autoencoder_loss_falls_and_decodes_distributions():
    """The training loss falls over epochs, the fit is seeded, and decoded rows sum to 1."""
    g = torch.Generator().manual_seed(0)
    peaks = torch.randint(49, (300,), generator=g)
    rows = (F.one_hot(peaks, 49).double() * 6 + torch.randn(300, 49, generator=g, dtype=torch.float64)).softmax(-1).float()
    ae, history = attention.fit_autoencoder(rows, latent=4, hidden=32, epochs=15, batch_size=64, seed=0)
    assert len(history) == 15
    assert history[-1] < history[0] - 0.1
    assert not ae.training
    _, history2 = attention.fit_autoencoder(rows, latent=4, hidden=32, epochs=15, batch_size=64, seed=0)
    assert history2 == history
    with torch.no_grad():
        decoded = ae.decode(ae.encode(rows[:10]))
    assert decoded.shape == (10, 49) and (decoded >= 0).all()
    torch.testing.assert_close(decoded.sum(-1), torch.ones(10), rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        attention.fit_autoencoder(rows[:1])


def test_query_maps_rows_and_owners():
    """Row j of a unit's head-h block is query j % 49 of image/window j // 49, renormalised."""
    p0 = random_rows(2, 1, 3, 50, 50, seed=7)
    p1 = random_rows(2, 2, 2, 49, 49, seed=8)  # windowed, no CLS
    maps = [hand_maps(p0), hand_maps(p1, cls=False, windowed=True)]
    rows, owners = attention.query_maps(maps)
    n0, n1 = 3 * 2 * 1 * 49, 2 * 2 * 2 * 49
    assert rows.shape == (n0 + n1, 49) and owners.shape == (n0 + n1, 3)
    torch.testing.assert_close(rows.sum(-1), torch.ones(n0 + n1), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(owners[:n0, 0], 0)
    np.testing.assert_array_equal(owners[n0:, 0], 1)
    # unit 0, head 1: rows n0/3 .. 2n0/3, image j // 49, query j % 49
    block = slice(2 * 49, 4 * 49)
    np.testing.assert_array_equal(owners[block, 1], 1)
    for j in range(2 * 49):
        b, q = j // 49, j % 49
        assert owners[block][j, 2] == q
        expected = p0[b, 0, 1, 1 + q, 1:] / p0[b, 0, 1, 1 + q, 1:].sum()
        torch.testing.assert_close(rows[block][j].double(), expected, rtol=1e-6, atol=1e-7)
    # unit 1, head 1: image j // 98, window (j // 49) % 2
    start = n0 + 4 * 49
    for j in range(4 * 49):
        b, w, q = j // 98, (j // 49) % 2, j % 49
        assert tuple(owners[start + j]) == (1, 1, q)
        torch.testing.assert_close(rows[start + j].double(), p1[b, w, 1, q], rtol=1e-6, atol=1e-7)


def test_query_maps_refuses_mixed_grids_and_nothing():
    """Maps on different grids (7x7 and 14x14) cannot share a vocabulary; no maps is an error."""
    a = hand_maps(random_rows(1, 1, 2, 50, 50))
    b = hand_maps(random_rows(1, 1, 2, 197, 197), pixels=2)
    with pytest.raises(ValueError, match=r"same grid.*\[7, 14\]"):
        attention.query_maps([a, b])
    with pytest.raises(ValueError):
        attention.query_maps([])


def test_attention_patterns_on_hand_made_maps():
    """Vocabulary (k, 7, 7) of distributions, mix rows summing to 1 for present heads, queries in range."""
    p0 = random_rows(2, 1, 2, 50, 50, seed=11)
    p1 = random_rows(2, 1, 3, 50, 50, seed=12)
    maps = [hand_maps(p0), hand_maps(p1)]
    pat = attention.attention_patterns(maps, k=4, latent=4, hidden=16, epochs=3, seed=0)
    assert pat.vocabulary.shape == (4, 7, 7)
    np.testing.assert_allclose(pat.vocabulary.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (pat.vocabulary >= 0).all()
    assert pat.mix.shape == (2, 3, 4)
    np.testing.assert_allclose(pat.mix[0, :2].sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(pat.mix[1].sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(pat.mix[0, 2], 0.0)  # unit 0 has no head 2
    m = 2 * 2 * 49 + 2 * 3 * 49
    assert pat.labels.shape == (m,) and pat.owners.shape == (m, 3) and len(pat.history) == 3
    assert set(pat.labels.tolist()) <= set(range(4))
    assert pat.query.shape == (4,) and ((0 <= pat.query) & (pat.query < 49)).all()
    for u, h in [(0, 1), (1, 2)]:
        mine = pat.labels[(pat.owners[:, 0] == u) & (pat.owners[:, 1] == h)]
        np.testing.assert_allclose(pat.mix[u, h], np.bincount(mine, minlength=4) / len(mine), rtol=1e-12)
    for c in range(4):
        if (pat.labels == c).any():
            counts = np.bincount(pat.owners[pat.labels == c, 2], minlength=49)
            assert counts[pat.query[c]] == counts.max()


# --- 13. units and geometry ----------------------------------------------------------------------

def test_attention_units_refuse_the_resnet_and_foreign_modules():
    """ResNet: ValueError naming the models with attention; anything but a Classifier: TypeError."""
    with pytest.raises(ValueError, match="vit, vit_local3, vit_local5, pit and alternet"):
        attention.attention_units(build("resnet"))
    with pytest.raises(TypeError, match="lib.core.models.build"):
        attention.attention_units(nn.Linear(3, 3))
    with pytest.raises(TypeError):
        attention.attention_units(build("vit").net)
    with pytest.raises(ValueError, match="no attention units"):
        attention.attention_maps(build("resnet"), images(1))


@pytest.mark.parametrize("name,pixels,grids,heads,windowed,cls", [
    ("vit", [4] * 6, [7] * 6, [8] * 6, False, True),
    ("vit_local3", [4] * 6, [7] * 6, [8] * 6, False, True),
    ("pit", [2, 2, 4, 4, 4, 4, 8, 8], [14, 14, 7, 7, 7, 7, 4, 4], [2, 2, 4, 4, 4, 4, 8, 8], False, True),
    ("alternet", [2, 4], [7, 7], [8, 16], True, False),
])
def test_unit_geometry(name, pixels, grids, heads, windowed, cls):
    """pixels per token, grid side, heads, windowing and CLS of every unit; units are the 'msa' blocks in order."""
    model = build(name)
    units = attention.attention_units(model)
    assert [u.pixels for u in units] == pixels
    assert [u.heads for u in units] == heads
    assert all(u.windowed is windowed and u.cls is cls for u in units)
    assert [u.index for u in units] == [b.index for b in blocks.blocks(model) if b.kind == "msa"]
    maps, _ = attention.attention_maps(model, images(1))
    assert [m.grid for m in maps] == grids
    stats = attention.attention_statistics(model, images(2))
    assert [s.grid for s in stats] == grids
    assert [s.strength.shape for s in stats] == [(2, h, g) for h, g in zip(heads, grids)]


# --- 14. attention statistics --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit", "alternet"])
def test_attention_statistics_batches_concatenate(name):
    """batch_size=3 over 7 images equals one batch of 7 and the per-map functions; shapes (n, H), (n, H, grid)."""
    model = build(name)
    x = images(7, seed=9)
    small = attention.attention_statistics(model, x, batch_size=3)
    whole = attention.attention_statistics(model, x, batch_size=7)
    maps, _ = attention.attention_maps(model, x)
    assert len(small) == len(whole) == len(maps)
    for s, w, m in zip(small, whole, maps):
        heads = m.unit.heads
        assert s.distance.shape == s.cls_mass.shape == (7, heads)
        assert s.strength.shape == (7, heads, m.grid)
        assert s.name == m.name and s.head_distance.shape == (heads,)
        for a, b in ((s.distance, w.distance), (s.cls_mass, w.cls_mass), (s.strength, w.strength)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        dist, cls_mass = attention.mean_distance(m)
        np.testing.assert_allclose(w.distance, dist, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(w.cls_mass, cls_mass, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(w.strength, attention.ring_strength(m), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s.head_distance, s.distance.mean(0))
        assert (s.distance > 0).all() and (s.distance <= 4 * math.hypot(6, 6) * (m.unit.pixels / 4) + 1e-9).all()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            attention.attention_statistics(model, x, batch_size=bad)
    with pytest.raises(ValueError, match="expected at least 1 images"):
        attention.attention_statistics(model, x[0])


# --- labels that do not match the images ---------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m, x, y: attention.head_importance(m, x, y),
    lambda m, x, y: attention.gradient_importance(m, x, y, batch_size=2),
    lambda m, x, y: attention.pruning_curve(m, x, y, [(0, 0)], [0], batch_size=2),
], ids=["head_importance", "gradient_importance", "pruning_curve"])
@pytest.mark.parametrize("n_labels", [1, 3, 6])
def test_analyses_with_labels_refuse_a_label_count_that_does_not_match(call, n_labels):
    """One label per image: too few labels (which would broadcast) or too many raise ValueError."""
    with pytest.raises(ValueError, match="same number of images"):
        call(build("vit"), images(4), labels(n_labels))


def test_pruning_curve_rejects_a_bad_batch_size():
    """batch_size=0 raises ValueError naming batch_size, as in the other analyses."""
    with pytest.raises(ValueError, match="batch_size"):
        attention.pruning_curve(build("vit"), images(4), labels(4), [(0, 0)], [0], batch_size=0)
