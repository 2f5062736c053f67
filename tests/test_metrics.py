"""metrics.evaluate and evaluate_per_image against a direct computation on a tiny model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.core import metrics


def test_evaluation_matches_the_logits_image_by_image():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = net(x)
    hits = (logits.argmax(1) == y).double().numpy()
    result = metrics.evaluate_per_image(net, x, y, batch_size=8)  # 4 full batches and a short one
    np.testing.assert_array_equal(result["correct"], hits)
    assert result["acc"] == 100.0 * hits.sum() / 37
    assert result["nll"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert metrics.evaluate(net, x, y, batch_size=8) == {"acc": result["acc"], "nll": result["nll"]}
    net.train()
    metrics.evaluate(net, x, y)
    assert net.training, "the model's mode is restored"


def _logits_and_labels(n: int = 400, classes: int = 4, sharpness: float = 6.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + sharpness * F.one_hot(labels, classes) * (
        torch.rand(n, 1, generator=g) > 0.15)  # most confidently right, some not: overconfident
    return logits, labels


def test_best_temperature_is_the_minimum_of_the_nll_on_a_fine_grid():
    logits, labels = _logits_and_labels()
    grid = np.exp(np.linspace(np.log(0.1), np.log(20), 4001))
    nll = [F.cross_entropy(logits.double() / t, labels).item() for t in grid]
    t_best = metrics.best_temperature(logits, labels)
    assert t_best == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)
    assert t_best > 1  # these logits are overconfident


def test_temperature_for_nll_hits_the_target_on_the_soft_side():
    logits, labels = _logits_and_labels()
    t_best = metrics.best_temperature(logits, labels)
    for t in (1.5 * t_best, 4.0 * t_best, 40.0 * t_best):
        target = metrics.nll_at_temperature(logits, labels, t)
        found = metrics.temperature_for_nll(logits, labels, target)
        assert found == pytest.approx(t, rel=1e-6)
        assert F.cross_entropy(logits.double() / found, labels).item() == pytest.approx(target, abs=1e-9)


def test_unreachable_targets_are_refused_with_the_reachable_range():
    logits, labels = _logits_and_labels()
    best = metrics.nll_at_temperature(logits, labels, metrics.best_temperature(logits, labels))
    with pytest.raises(ValueError, match=r"must lie in \["):
        metrics.temperature_for_nll(logits, labels, best - 0.01)
    with pytest.raises(ValueError, match="log of 4 classes"):
        metrics.temperature_for_nll(logits, labels, np.log(4))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        metrics.nll_at_temperature(logits, labels, 0.0)


def test_logits_of_matches_the_model_and_restores_its_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Dropout(0.5)).train()
    x = torch.rand(10, 1, 4, 4)
    out = metrics.logits_of(net, x, batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(x))
    net.train()
    metrics.logits_of(net, x)
    assert net.training


def test_matched_temperatures_bring_every_model_to_the_least_fitted_models_nll():
    sharp, labels = _logits_and_labels(sharpness=6.0, seed=0)
    g = torch.Generator().manual_seed(5)
    soft = 0.2 * sharp + 0.3 * torch.randn(sharp.shape, generator=g)  # the same labels, a worse fit
    temps = metrics.matched_temperatures({"sharp": sharp, "soft": soft}, labels)
    target = F.cross_entropy(soft.double(), labels).item()
    assert temps["soft"] == 1.0 and temps["sharp"] > 1.0
    assert F.cross_entropy(sharp.double() / temps["sharp"], labels).item() == pytest.approx(target, abs=1e-9)
    with pytest.raises(ValueError, match="logits is empty"):
        metrics.matched_temperatures({}, labels)
