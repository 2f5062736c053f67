"""lib.analyses.attention: attention maps, distances and ring strength against brute-force and hand-made
answers, rollout against hand products, the units' geometry and the statistics per image."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lib.core import models, residual
from lib.analyses import attention

pytestmark = pytest.mark.usefixtures("one_thread")

ATTENTION_MODELS = ("vit", "vit_local3", "vit_local5", "pit", "alternet")
UNIFORM_7x7_PX4 = 14.437861767102046  # the mean distance of two uniform positions on 7x7 patches of 4 px


def fused_flags(model: nn.Module) -> list[bool]:
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


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
def test_uniform_attention_inside_the_local_mask_gives_the_windowed_uniform_distance(window, hand_maps):
    """Patch queries spreading evenly over their allowed keys (neighbourhood_mask): uniform_distance(window=k)."""
    allowed = models.neighbourhood_mask(7, window).double()
    probs = (allowed / allowed.sum(-1, keepdim=True)).expand(1, 1, 2, 50, 50).clone()
    dist, cls_mass = attention.mean_distance(hand_maps(probs))
    np.testing.assert_allclose(dist, attention.uniform_distance(7, 4, window=window), rtol=1e-12)
    np.testing.assert_array_equal(cls_mass, 0.0)


# --- 2. uniform attention ------------------------------------------------------------------------

def test_uniform_attention_distance_cls_mass_and_flat_rings(hand_maps):
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


def test_one_hot_attention_at_known_offsets(hand_maps):
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
def test_mean_distance_scales_with_the_unit_pixels(pixels, hand_maps):
    """The same attention on tokens of p pixels gives p/4 times the distance on 4-pixel tokens."""
    at4, _ = attention.mean_distance(hand_maps(one_hot_probs(), pixels=4))
    atp, _ = attention.mean_distance(hand_maps(one_hot_probs(), pixels=pixels))
    np.testing.assert_allclose(atp, at4 * pixels / 4, rtol=1e-12)
    assert atp[0, 0] == pytest.approx(30 * pixels * math.sqrt(5) / 49, abs=1e-12)


def test_one_hot_far_corner_offset_value(hand_maps):
    """Offset (-6, -6) exists only for the bottom-right query: mean distance 4·6√2/49."""
    dist, _ = attention.mean_distance(hand_maps(one_hot_probs()))
    assert dist[1, 2] == pytest.approx(4 * 6 * math.sqrt(2) / 49, abs=1e-12)


def test_query_attending_only_to_cls_raises(hand_maps):
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
def test_cls_mass_is_set_apart_and_rows_renormalised(varying, hand_maps, random_rows):
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

def test_rollout_of_identity_attention_is_identity(hand_maps):
    """Identity attention in every head of every unit rolls out to the identity."""
    eye = torch.eye(50, dtype=torch.float64).expand(2, 1, 4, 50, 50).clone()
    r = attention.rollout([hand_maps(eye), hand_maps(eye), hand_maps(eye)])
    assert r.shape == (2, 50, 50)
    torch.testing.assert_close(r, torch.eye(50, dtype=torch.float64).expand(2, 50, 50), rtol=0, atol=1e-15)


def test_rollout_of_two_units_is_the_hand_product(hand_maps, random_rows):
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


def test_rollout_refuses_windows_and_changing_sequences(seeded_model, random_images, hand_maps):
    """rollout raises ValueError on windowed units (AlterNet), pooled sequences (PiT) and no maps."""
    x = random_images(2)
    for name in ("alternet", "pit"):
        maps, _ = attention.attention_maps(seeded_model(name), x)
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
def test_attention_maps_logits_shapes_rows_and_restored_switch(name, fused, seeded_model, random_images):
    """attention_maps: logits equal model(x) on either path, switch and outputs unchanged, rows sum to 1, shapes."""
    model = models.use_fused_attention(seeded_model(name), fused)
    x = random_images(3)
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


def test_attention_maps_restores_training_mode(seeded_model, random_images):
    """A model in training mode is back in training mode after attention_maps (eval inside)."""
    model = seeded_model("vit").train()
    attention.attention_maps(model, random_images(2))
    assert model.training
    model.eval()
    attention.attention_maps(model, random_images(2))
    assert not model.training


def test_vit_first_unit_maps_are_the_softmax_of_its_queries_and_keys(seeded_model, random_images):
    """vit block0: captured probs equal softmax(q kᵀ · scale) recomputed from the embedding by hand."""
    model = seeded_model("vit")
    x = random_images(2)
    maps, _ = attention.attention_maps(model, x)
    units = residual.units(model)
    with torch.no_grad():
        tokens = units[0](x)
        attn = model.net.blocks[0].attn
        n = model.net.blocks[0].norm1(tokens)
        qkv = attn.qkv(n).reshape(2, 50, 3, 8, 16).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        expected = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)
    torch.testing.assert_close(maps[0].probs[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_alternet_window_maps_follow_the_window_order(seeded_model, random_images):
    """alternet stage2: window w = 2·(row block) + (column block) of the 14x14 map, recomputed by hand."""
    model = seeded_model("alternet")
    x = random_images(2)
    maps, _ = attention.attention_maps(model, x)
    all_units = residual.units(model)
    unit = attention.attention_units(model)[0]
    block = all_units[unit.index].module.block
    with torch.no_grad():
        stream = residual.run_units(all_units[:unit.index], x)
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
def test_local_vits_attend_only_inside_their_neighbourhood(name, window, fused, seeded_model, random_images):
    """Patch queries of the local ViTs give exactly 0 to keys outside k x k and to CLS; the CLS query sees all."""
    model = models.use_fused_attention(seeded_model(name), fused)
    maps, _ = attention.attention_maps(model, random_images(2))
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


# --- 13. units and geometry ----------------------------------------------------------------------

def test_attention_units_refuse_the_resnet_and_foreign_modules(seeded_model, random_images):
    """ResNet: ValueError naming the models with attention; anything but a Classifier: TypeError."""
    with pytest.raises(ValueError, match="vit, vit_local3, vit_local5, pit and alternet"):
        attention.attention_units(seeded_model("resnet"))
    with pytest.raises(TypeError, match="lib.core.models.build"):
        attention.attention_units(nn.Linear(3, 3))
    with pytest.raises(TypeError):
        attention.attention_units(seeded_model("vit").net)
    with pytest.raises(ValueError, match="no attention units"):
        attention.attention_maps(seeded_model("resnet"), random_images(1))


@pytest.mark.parametrize("name,pixels,grids,heads,windowed,cls", [
    ("vit", [4] * 6, [7] * 6, [8] * 6, False, True),
    ("vit_local3", [4] * 6, [7] * 6, [8] * 6, False, True),
    ("pit", [2, 2, 4, 4, 4, 4, 8, 8], [14, 14, 7, 7, 7, 7, 4, 4], [2, 2, 4, 4, 4, 4, 8, 8], False, True),
    ("alternet", [2, 4], [7, 7], [8, 16], True, False),
])
def test_unit_geometry(name, pixels, grids, heads, windowed, cls, seeded_model, random_images):
    """pixels per token, grid side, heads, windowing and CLS of every unit; units are the 'msa' blocks in order."""
    model = seeded_model(name)
    units = attention.attention_units(model)
    assert [u.pixels for u in units] == pixels
    assert [u.heads for u in units] == heads
    assert all(u.windowed is windowed and u.cls is cls for u in units)
    assert [u.index for u in units] == [b.index for b in residual.units(model) if b.kind == "msa"]
    maps, _ = attention.attention_maps(model, random_images(1))
    assert [m.grid for m in maps] == grids
    stats = attention.attention_statistics(model, random_images(2))
    assert [s.grid for s in stats] == grids
    assert [s.strength.shape for s in stats] == [(2, h, g) for h, g in zip(heads, grids)]


# --- 14. attention statistics --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit", "alternet"])
def test_attention_statistics_batches_concatenate(name, seeded_model, random_images):
    """batch_size=3 over 7 images equals one batch of 7 and the per-map functions; shapes (n, H), (n, H, grid)."""
    model = seeded_model(name)
    x = random_images(7, seed=9)
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
    with pytest.raises(ValueError, match="x must be at least 1 image"):
        attention.attention_statistics(model, x[0])


def test_local_heads_count_the_heads_below_a_share_of_even_attention(hand_maps, random_rows):
    """Head means 5, 10.8 and 14 px on 7x7 patches of 4 px: even attention spreads over 14.44 px, so
    with share 0.75 (10.83 px) two heads are local, with share 1 all three, with 0.3 none."""
    unit = hand_maps(random_rows(1, 1, 3, 50, 50)).unit
    distance = np.array([[4.0, 10.7, 14.0], [6.0, 10.9, 14.0]])
    stat = attention.UnitStatistics(unit, 7, distance, np.zeros((2, 3)), np.zeros((2, 3, 7)))
    assert stat.positions == 49
    assert attention.local_heads([stat]) == 2
    assert attention.local_heads([stat, stat], share=1.0) == 6
    assert attention.local_heads([stat], share=0.3) == 0
    with pytest.raises(ValueError, match="share"):
        attention.local_heads([stat], share=0.0)


def test_spread_contrast_by_hand():
    # two images; unit 1 heads mean 1 and 5 (range 4), unit 2 heads mean 3, 4, 4.5 (range 1.5)
    rows = np.array([[0.0, 6.0, 3.0, 4.0, 4.0],
                     [2.0, 4.0, 3.0, 4.0, 5.0]])
    assert attention.spread_contrast(rows, 2) == pytest.approx(4.0 - 1.5)
    assert attention.spread_contrast(rows[:, [2, 3, 4, 0, 1]], 3) == pytest.approx(1.5 - 4.0)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="0 < first_heads < columns"):
            attention.spread_contrast(rows, bad)


def test_even_distance_is_the_uniform_distance_of_the_unit_grid(seeded_model, random_images):
    stats = attention.attention_statistics(seeded_model("vit"), random_images(4))
    s = stats[0]
    assert s.even_distance() == attention.uniform_distance(s.grid, s.unit.pixels)
    assert s.even_distance(3) == attention.uniform_distance(s.grid, s.unit.pixels, 3)
