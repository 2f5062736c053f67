"""The one way to run a model for an analysis: device rule, eval mode, progress, hooks, checks."""
import pytest
import torch
from torch import nn

from lib.core import running


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_model_device_reads_parameters_then_buffers_then_defaults_to_the_cpu():
    assert running.model_device(small_model()) == torch.device("cpu")
    only_buffers = nn.Module()
    only_buffers.register_buffer("b", torch.zeros(1))
    assert running.model_device(only_buffers) == torch.device("cpu")
    assert running.model_device(nn.Identity()) == torch.device("cpu")


def test_analysis_device_is_the_models_own_unless_named():
    model = small_model()
    assert running.analysis_device(model) == torch.device("cpu")
    assert running.analysis_device(model, "cpu") == torch.device("cpu")
    assert running.analysis_device(model, torch.device("meta")) == torch.device("meta")


@pytest.mark.parametrize("start_training", [True, False])
def test_eval_mode_restores_the_callers_mode_even_after_an_error(start_training):
    model = small_model().train(start_training)
    with running.eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert all(m.training == start_training for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with running.eval_mode(model):
            raise RuntimeError("boom")
    assert all(m.training == start_training for m in model.modules())


def test_runs_in_eval_mode_decorates_an_analysis():
    @running.runs_in_eval_mode
    def mode_seen(model: nn.Module, scale: int, *, offset: int = 0) -> tuple[bool, int]:
        """Docstring kept."""
        return model.training, scale + offset

    model = small_model().train()
    assert mode_seen(model, 2, offset=1) == (False, 3)
    assert model.training and mode_seen.__doc__ == "Docstring kept." and mode_seen.__name__ == "mode_seen"


def test_progress_bar_is_silent_unless_asked(capsys):
    assert list(running.progress_bar(range(3), desc="quiet")) == [0, 1, 2]
    assert capsys.readouterr() == ("", "")
    assert list(running.progress_bar(range(3), desc="shown", progress=True)) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert out == "" and "shown" in err  # on stderr only: never in a notebook's stored stdout
    bar = running.progress_bar(total=2, desc="by hand", progress=False)
    bar.update(2)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_captured_outputs_records_each_module_and_removes_its_hooks():
    model = small_model().eval()
    x = torch.randn(5, 3)
    with running.captured_outputs({"first": model[0], 3: model[3]}) as seen:
        logits = model(x)
    assert set(seen) == {"first", 3}
    torch.testing.assert_close(seen["first"], model[0](x))
    torch.testing.assert_close(seen[3], logits)
    assert not model[0]._forward_hooks and not model[3]._forward_hooks
    with pytest.raises(ValueError):
        with running.captured_outputs({"first": model[0]}):
            raise ValueError("the hooks must still go")
    assert not model[0]._forward_hooks


@pytest.mark.parametrize("value", [1, 7])
def test_check_positive_int_accepts_whole_numbers(value):
    running.check_positive_int(value, "n")


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4", None])
def test_check_positive_int_names_the_bad_value(value):
    with pytest.raises(ValueError, match=rf"^n must be a positive integer, got {value!r}$".replace("(", r"\(")):
        running.check_positive_int(value, "n")


def test_check_positive_int_with_a_larger_minimum():
    running.check_positive_int(4, "batch_size", minimum=4)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 4, got 3"):
        running.check_positive_int(3, "batch_size", minimum=4)
