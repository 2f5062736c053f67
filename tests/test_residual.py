"""blocks(model): the residual-unit decomposition reproduces model(x) exactly, for every model."""
import pytest
import torch

from lib.core import residual
from lib.core import models


def _trained_looking(model):
    """Give BatchNorm non-trivial running statistics so eval mode is a real test."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, 1, 28, 28))
    return model.eval()


CASES = [(name, None) for name in models.MODELS] + [("alternet", "CC,MC,MC"), ("alternet", "CC,CM,MM")]


@pytest.mark.parametrize("name,layout", CASES)
def test_blocks_recompose_exactly(name, layout):
    torch.manual_seed(0)
    model = _trained_looking(models.build(name, drop_path_rate=0.1, layout=layout))
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(residual.run_units(residual.units(model), x), model(x))


@pytest.mark.parametrize("name", models.MODELS)
def test_block_structure(name):
    units = residual.units(models.build(name))
    assert units[0].kind == "embed" and units[-1].kind == "head"
    assert {u.kind for u in units} <= set(residual.KINDS)
    assert len({u.name for u in units}) == len(units)
    stages = [u.stage for u in units]
    assert stages == sorted(stages)


@pytest.mark.parametrize("name", models.MODELS)
def test_units_own_disjoint_parts_of_every_parameter(name):
    """Units are views onto the model's own weights: each parameter belongs to exactly one unit."""
    model = models.build(name)
    owned = [id(p) for u in residual.units(model) for p in u.module.parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in model.parameters()}


def test_vit_units_alternate_msa_mlp():
    kinds = [u.kind for u in residual.units(models.build("vit"))]
    assert kinds == ["embed"] + ["msa", "mlp"] * 6 + ["head"]


def test_pit_units_carry_stages_and_pooling():
    units = residual.units(models.build("pit"))
    assert [u.name for u in units if u.kind == "pool"] == ["stage2.pool", "stage3.pool"]
    x = torch.rand(2, 1, 28, 28)
    _, outs = residual.run_units(units, x, keep=True)
    grids = {u.stage: tuple(residual.as_grid(o).shape[2:]) for u, o in zip(units[:-1], outs[:-1])}
    assert grids == {0: (14, 14), 1: (7, 7), 2: (4, 4)}


@pytest.mark.parametrize("name", models.MODELS)
def test_residual_units_are_x_plus_branch(name):
    torch.manual_seed(0)
    model = _trained_looking(models.build(name))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        _, outs = residual.run_units(residual.units(model), x, keep=True)
        units = residual.units(model)
        checked = 0
        for i, u in enumerate(units):
            if u.residual:
                inp = outs[i - 1]
                torch.testing.assert_close(u(inp), inp + u.module.branch(inp))
                checked += 1
    assert checked >= 4


def test_as_grid():
    tokens = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)
    grid = residual.as_grid(tokens)
    assert grid.shape == (2, 3, 7, 7)
    assert torch.equal(grid[0, :, 0, 1], tokens[0, 2])  # CLS dropped, row-major
    no_cls = tokens[:, 1:]
    assert torch.equal(residual.as_grid(no_cls), grid)
    fmap = torch.rand(2, 4, 5, 5)
    assert residual.as_grid(fmap) is fmap
    with pytest.raises(ValueError, match="shape"):
        residual.as_grid(torch.rand(2, 10))


def test_blocks_rejects_other_modules():
    with pytest.raises(TypeError, match="zoo model"):
        residual.units(torch.nn.Linear(2, 2))
