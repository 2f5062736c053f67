"""Model summaries: FLOP counts against hand-computed values, unit tables against the model."""
import pytest
from torch import nn

from lib.core import residual
from lib.core import models
from lib.analyses import summary


def test_flops_of_a_linear_and_a_conv_layer():
    assert summary.count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2)) == 2 * 12 * 5
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert summary.count_flops(conv, (2, 8, 8)) == 2 * (8 * 8) * 4 * (2 * 9)


# Hand counts from the architecture numbers in lib/core/models.py (28×28 inputs, 1 channel, 10 classes):
# a multiply-add is 2 FLOPs; biases, norms, activations, softmax and pooling are not counted.

def conv(out_side: int, in_per_group: int, out_chs: int, k: int) -> int:
    return 2 * out_side * out_side * out_chs * in_per_group * k * k


def linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def attention(tokens: int, dim: int, windows: int = 1) -> int:
    """Scores q·kᵀ and the weighted sum of v, over all heads (2·N²·D each), in every window."""
    return windows * 2 * (2 * tokens * tokens * dim)


def transformer_block(n: int, d: int) -> int:
    """qkv, attention, projection, MLP with ratio 4."""
    return linear(n, d, 3 * d) + attention(n, d) + linear(n, d, d) + linear(n, d, 4 * d) + linear(n, 4 * d, d)


def basic_block(side: int, in_chs: int, out_chs: int) -> int:
    """Two 3x3 convolutions (the first with the stride), plus a 1x1 projection when the width changes."""
    projection = conv(side, in_chs, out_chs, 1) if in_chs != out_chs else 0
    return conv(side, in_chs, out_chs, 3) + conv(side, out_chs, out_chs, 3) + projection


def msa_block(side: int, chs: int, window: int) -> int:
    """1x1 down to twice the width, windowed attention (qkv, scores, sum, projection), 1x1 up."""
    hidden, n = 2 * chs, side * side
    return (conv(side, chs, hidden, 1) + linear(n, hidden, 3 * hidden)
            + attention(window * window, hidden, windows=n // window ** 2) + linear(n, hidden, hidden)
            + conv(side, hidden, chs, 1))


def resnet_flops(alternet: bool) -> int:
    """3x3 stem; stages at 28, 14, 7 pixels and widths 40, 80, 160; AlterNet's "CC,CM,CM" swaps
    the last block of stages 2 and 3 for an MSA block (windows of 7x7: four at 14x14, one at 7x7)."""
    total = conv(28, 1, 40, 3) + 2 * basic_block(28, 40, 40)
    total += basic_block(14, 40, 80) + (msa_block(14, 80, 7) if alternet else basic_block(14, 80, 80))
    total += basic_block(7, 80, 160) + (msa_block(7, 160, 7) if alternet else basic_block(7, 160, 160))
    return total + linear(1, 160, 10)


def vit_flops() -> int:
    """Patch 4 (7x7 patches), 6 blocks of 1 + 49 tokens at width 128, head on CLS. The local ViTs
    mask their attention but still compute every score, so they count the same."""
    return conv(7, 1, 128, 4) + 6 * transformer_block(50, 128) + linear(1, 128, 10)


def pit_flops() -> int:
    """Patch 2 (14x14), then 2/4/2 blocks at widths 40/80/160 with CLS in front; each pooling is a
    grouped 3x3 stride-2 convolution (one input channel per group, to 7x7 then 4x4) plus a linear map of CLS."""
    total = conv(14, 1, 40, 2) + 2 * transformer_block(1 + 14 * 14, 40)
    total += conv(7, 1, 80, 3) + linear(1, 40, 80) + 4 * transformer_block(1 + 7 * 7, 80)
    total += conv(4, 1, 160, 3) + linear(1, 80, 160) + 2 * transformer_block(1 + 4 * 4, 160)
    return total + linear(1, 160, 10)


HAND_COUNTS = {"resnet": resnet_flops(alternet=False), "alternet": resnet_flops(alternet=True), "vit": vit_flops(),
               "vit_local3": vit_flops(), "vit_local5": vit_flops(), "pit": pit_flops()}


def test_vit_hand_count_in_literal_numbers():
    """The helpers above, spelled out once: embedding, 6 × (qkv, scores, sum, projection, MLP), head."""
    per_block = 2 * 50 * 128 * 384 + 4 * 50 * 50 * 128 + 2 * 50 * 128 * 128 + 4 * 50 * 128 * 512
    assert vit_flops() == 2 * 49 * 128 * 16 + 6 * per_block + 2 * 128 * 10 == 125_848_064


@pytest.mark.parametrize("name", models.MODELS)
def test_flops_of_every_zoo_model_match_a_hand_count_and_leave_it_unchanged(name):
    assert set(HAND_COUNTS) == set(models.MODELS)
    model = models.build(name).train()
    assert summary.count_flops(model, (1, 28, 28)) == HAND_COUNTS[name]
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_unit_table_matches_blocks_and_parameters():
    model = models.build("pit")
    rows = summary.unit_table(model, (1, 28, 28))
    assert [r.name for r in rows] == [u.name for u in residual.units(model)]
    assert sum(r.params for r in rows) == models.count_parameters(model)
    assert rows[0].output_shape == (197, 40) and rows[-1].output_shape == (10,)


def test_model_summary_counts_units():
    s = summary.model_summary(models.build("alternet"), (1, 28, 28))
    assert (s["conv_units"], s["msa_units"], s["embed_units"], s["head_units"]) == (4, 2, 1, 1)
    assert s["params"] == models.count_parameters(models.build("alternet"))
