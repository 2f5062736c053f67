"""lib.analyses.head_importance: head masking against zeroed output-projection weights, head importance
and the gradient proxy against independent forward passes and autograd, pruning curves, and the
checks of labels and batch sizes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core import models
from lib.analyses import attention, head_importance

pytestmark = pytest.mark.usefixtures("one_thread")


def zero_head_columns(model: nn.Module, unit: int, head: int) -> None:
    """Zero the output-projection input columns that head ``head`` of attention unit ``unit`` feeds."""
    u = attention.attention_units(model)[unit]
    hd = u.module.proj.weight.shape[1] // u.heads
    with torch.no_grad():
        u.module.proj.weight[:, head * hd:(head + 1) * hd] = 0


def param_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


# --- 8. head masking -----------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_masking_a_head_with_zero_projection_changes_nothing(fused, seeded_model, random_images):
    """A head whose proj columns are zero: masking it leaves the logits; masking another changes them."""
    model = seeded_model("vit")
    zero_head_columns(model, 2, 5)
    models.use_fused_attention(model, fused)
    x = random_images(4)
    with torch.no_grad():
        clean = model(x)
        with head_importance.masked_heads(model, [(2, 5)]):
            masked = model(x)
        with head_importance.masked_heads(model, [(2, 4)]):
            other = model(x)
        again = model(x)
    torch.testing.assert_close(masked, clean, rtol=0, atol=1e-6)
    assert (other - clean).abs().max() > 1e-4
    assert torch.equal(again, clean)
    for u in attention.attention_units(model):
        assert len(u.module.proj._forward_pre_hooks) == 0


def test_masked_heads_removes_hooks_after_an_error(seeded_model):
    """The hooks go even when the body raises."""
    model = seeded_model("vit")
    with pytest.raises(RuntimeError, match="boom"):
        with head_importance.masked_heads(model, [(0, 0), (3, 7)]):
            raise RuntimeError("boom")
    assert all(len(u.module.proj._forward_pre_hooks) == 0 for u in attention.attention_units(model))


@pytest.mark.parametrize("heads,match", [
    ([(6, 0)], r"units 0\.\.5"),
    ([(-1, 0)], r"units 0\.\.5"),
    ([(0, 8)], r"heads 0\.\.7, got head 8"),
    ([(1, -1)], r"heads 0\.\.7"),
])
def test_masked_heads_rejects_bad_units_and_heads(heads, match, seeded_model):
    """Invalid unit or head: ValueError naming the valid range."""
    model = seeded_model("vit")
    with pytest.raises(ValueError, match=match):
        with head_importance.masked_heads(model, heads):
            pass


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("unit,heads", [(0, [3]), (0, [0, 7]), (1, [15]), (1, [2, 9, 10])])
def test_masking_equals_zeroing_projection_columns_in_alternet(unit, heads, fused, seeded_model, random_images):
    """AlterNet's windowed units: masked_heads gives the logits of a copy with those proj columns zeroed."""
    model = models.use_fused_attention(seeded_model("alternet"), fused)
    zeroed = copy.deepcopy(model)
    for h in heads:
        zero_head_columns(zeroed, unit, h)
    x = random_images(2)
    with torch.no_grad():
        with head_importance.masked_heads(model, [(unit, h) for h in heads]):
            masked = model(x)
        expected = zeroed(x)
        clean = model(x)
    torch.testing.assert_close(masked, expected, rtol=0, atol=1e-5)
    assert (masked - clean).abs().max() > 1e-5


# --- 9. head importance --------------------------------------------------------------------------

def test_head_importance_matches_independent_masked_forward_passes(seeded_model, random_images, random_labels):
    """loss_rise and correct_drop equal per-image CE / correctness with proj columns zeroed minus clean."""
    model = seeded_model("vit")
    zero_head_columns(model, 3, 5)
    x, y = random_images(6), random_labels(6)
    hi = head_importance.head_importance(model, x, y, batch_size=4)
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
        head_importance.head_importance(model, x, y[:5])
    with pytest.raises(ValueError, match="'loss' or 'accuracy'"):
        hi.matrix("bogus")


def test_head_importance_on_alternet_has_one_array_per_unit(seeded_model, random_images, random_labels):
    """AlterNet (8 and 16 heads): per-unit arrays, matrix refuses mixed head counts."""
    model = seeded_model("alternet")
    x, y = random_images(2), random_labels(2)
    hi = head_importance.head_importance(model, x, y)
    assert [a.shape for a in hi.loss_rise] == [(2, 8), (2, 16)]
    with pytest.raises(ValueError, match="different numbers of heads"):
        hi.matrix()
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        with head_importance.masked_heads(model, [(1, 11)]):
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
def test_gradient_importance_matches_autograd_on_scaled_projection(name, cases, seeded_model, random_images, random_labels):
    """|∂L/∂ξ| per image equals autograd through proj columns scaled by ξ; shapes (n, heads)."""
    model = seeded_model(name)
    zero_head_columns(model, 1, 4)
    x, y = random_images(2, seed=5), random_labels(2, seed=5)
    grads = head_importance.gradient_importance(model, x, y, batch_size=1)
    units = attention.attention_units(model)
    assert [g.shape for g in grads] == [(2, u.heads) for u in units]
    for u, h in cases:
        for i in range(2):
            expected = abs(scaled_weight_gradient(model, u, h, x[i:i + 1], y[i:i + 1]))
            assert grads[u][i, h] == pytest.approx(expected, rel=1e-4, abs=1e-8), (u, h, i)
            assert expected > 1e-6
    np.testing.assert_array_equal(grads[1][:, 4], 0.0)
    both = head_importance.gradient_importance(model, x, y, batch_size=2)
    for a, b in zip(grads, both):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)
    assert all(len(u.module.proj._forward_pre_hooks) == 0 for u in units)


# --- 11. pruning ---------------------------------------------------------------------------------

def test_pruning_order_sorts_ascending_with_ties_by_unit_and_head():
    """Scores ascending; equal scores in (unit, head) order; a 2-D array works like a list of rows."""
    scores = [np.array([0.3, 0.1, 0.2]), np.array([0.1, 0.05, 0.3])]
    expected = [(1, 1), (0, 1), (1, 0), (0, 2), (0, 0), (1, 2)]
    assert head_importance.pruning_order(scores) == expected
    assert head_importance.pruning_order(np.stack(scores)) == expected
    assert head_importance.pruning_order([np.zeros(2), np.zeros(3)]) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def test_pruning_curve_matches_independent_masked_runs(seeded_model, random_images, random_labels):
    """Step 0 is the clean correctness; step k is the correctness with order[:k] masked."""
    model = seeded_model("vit")
    x, y = random_images(8, seed=2), random_labels(8, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)  # make the clean model right everywhere, so masking has something to break
        y[::3] = (y[::3] + 1) % 10
    scores = np.random.default_rng(0).random((6, 8))
    order = head_importance.pruning_order(scores)
    steps = [0, 1, 10, 30, 48]
    curve = head_importance.pruning_curve(model, x, y, order, steps, batch_size=3)
    assert curve.correct.shape == (5, 8) and curve.order == order
    np.testing.assert_array_equal(curve.n_masked, steps)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double().numpy()
    np.testing.assert_array_equal(curve.correct[0], clean)
    for i, k in enumerate(steps):
        with torch.no_grad(), head_importance.masked_heads(model, order[:k]):
            ok = (model(x).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(curve.correct[i], ok)
    np.testing.assert_allclose(curve.accuracy, curve.correct.mean(1) * 100)
    for bad in ([-1], [49], [0, 50]):
        with pytest.raises(ValueError, match=r"steps must lie in \[0, 48\]"):
            head_importance.pruning_curve(model, x, y, order, bad)
    with pytest.raises(ValueError, match="heads 0..7"):
        head_importance.pruning_curve(model, x, y, [(0, 9)], [1])


# --- labels that do not match the images ---------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m, x, y: head_importance.head_importance(m, x, y),
    lambda m, x, y: head_importance.gradient_importance(m, x, y, batch_size=2),
    lambda m, x, y: head_importance.pruning_curve(m, x, y, [(0, 0)], [0], batch_size=2),
], ids=["head_importance", "gradient_importance", "pruning_curve"])
@pytest.mark.parametrize("n_labels", [1, 3, 6])
def test_analyses_with_labels_refuse_a_label_count_that_does_not_match(call, n_labels, seeded_model, random_images, random_labels):
    """One label per image: too few labels (which would broadcast) or too many raise ValueError."""
    with pytest.raises(ValueError, match="same number of images"):
        call(seeded_model("vit"), random_images(4), random_labels(n_labels))


def test_pruning_curve_rejects_a_bad_batch_size(seeded_model, random_images, random_labels):
    """batch_size=0 raises ValueError naming batch_size, as in the other analyses."""
    with pytest.raises(ValueError, match="batch_size"):
        head_importance.pruning_curve(seeded_model("vit"), random_images(4), random_labels(4), [(0, 0)], [0], batch_size=0)


def test_top_share_by_hand():
    # mean rises 1, 2, 3, 4 (sum 10): heads 3 and 2 carry 0.7, an equal share of two of four is 0.5
    rows = np.array([[0.0, 2.0, 2.0, 4.0],
                     [2.0, 2.0, 4.0, 4.0]])
    assert head_importance.top_share(rows, [3, 2]) == pytest.approx(0.2)
    assert head_importance.top_share(rows, [0, 1, 2, 3]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"distinct head indices in \[0, 4\)"):
        head_importance.top_share(rows, [4])
    with pytest.raises(ValueError, match="distinct head indices"):
        head_importance.top_share(rows, [1, 1])
    with pytest.raises(ValueError, match="summed loss rise must be positive"):
        head_importance.top_share(-rows, [1])
