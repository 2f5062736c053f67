"""metrics.evaluate and evaluate_per_image against a direct computation on a tiny model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib import metrics


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
