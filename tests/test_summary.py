"""Model summaries: FLOP counts against hand-computed values, unit tables against the model."""
import torch
from torch import nn

from lib import blocks as B
from lib import models, summary


def test_flops_of_a_linear_and_a_conv_layer():
    assert summary.count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2)) == 2 * 12 * 5
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert summary.count_flops(conv, (2, 8, 8)) == 2 * (8 * 8) * 4 * (2 * 9)


def test_vit_flops_match_a_hand_count():
    """Patch embedding + 6 blocks (qkv, scores, weighted sum, projection, MLP) + head."""
    n, d, depth = 50, 128, 6
    embed = 2 * 49 * d * 16
    per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * 4 * d
    head = 2 * d * 10
    assert summary.count_flops(models.build("vit"), (1, 28, 28)) == embed + depth * per_block + head


def test_flops_of_every_zoo_model_leave_it_unchanged():
    for name in models.MODELS:
        model = models.build(name).train()
        assert summary.count_flops(model, (1, 28, 28)) > 0
        assert model.training and all(p.requires_grad for p in model.parameters())


def test_unit_table_matches_blocks_and_parameters():
    model = models.build("pit")
    rows = summary.unit_table(model, (1, 28, 28))
    assert [r.name for r in rows] == [u.name for u in B.blocks(model)]
    assert sum(r.params for r in rows) == models.count_parameters(model)
    assert rows[0].output_shape == (197, 40) and rows[-1].output_shape == (10,)


def test_model_summary_counts_units():
    s = summary.model_summary(models.build("alternet"), (1, 28, 28))
    assert (s["conv_units"], s["msa_units"], s["embed_units"], s["head_units"]) == (4, 2, 1, 1)
    assert s["params"] == models.count_parameters(models.build("alternet"))
