"""Training: the recipe lowers the loss, resume is exact, DDP matches one process, bad input fails."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib.core import data, io, metrics, models
from lib.zoo import runstate, train
from lib.zoo import recipe as recipe_module

REPO = Path(__file__).resolve().parent.parent
# Small, fast and deterministic: no augmentation or drop-path noise unless a test asks for it.
TINY = recipe_module.Recipe(epochs=2, warmup_epochs=1, batch_size=256, lr=2e-3, drop_path=0.0, augment=False)


def test_two_steps_lower_the_loss():
    recipe = replace(TINY, epochs=1, warmup_epochs=0, batch_size=512, lr=5e-3, label_smoothing=0.0)
    x, y = data.load("synthetic")
    record = train.train("resnet", "synthetic", recipe=recipe, seed=0, progress=False)
    torch.manual_seed(0)
    before = models.build("resnet", **record["build"]).eval()
    after = models.build("resnet", **record["build"])
    io.load_half_state_dict(after, record["weights"])
    after.eval()
    with torch.no_grad():
        loss_before = F.cross_entropy(before(x), y).item()
        loss_after = F.cross_entropy(after(x), y).item()
    assert len(x) // recipe.batch_size == 2  # two optimisation steps
    assert loss_after < loss_before - 0.05


def test_record_has_full_provenance(tmp_path):
    out = tmp_path / "vit.pt"
    record = train.train("vit", "synthetic", subset=0.5, recipe=TINY, seed=3, out=out, progress=False)
    for key in ("model", "build", "dataset", "subset", "recipe", "seed", "history", "device", "torch",
                "timm", "wall_time_s", "images_per_s", "test_acc", "test_nll", "status", "params"):
        assert key in record, key
    assert record["status"] == "provisional" and record["subset"] == 0.5 and record["seed"] == 3
    assert record["n_train"] == len(data.load("synthetic", subset=0.5, seed=0)[1]) < 1024
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert set(record["snapshots"]) == {"warmup"}  # end of the one warm-up epoch
    assert all(v.dtype in (torch.float16, torch.int64) for v in record["weights"].values())
    traj = record["trajectory"]  # polar trajectory from per-epoch snapshots, only numbers kept
    assert traj["epoch"] == [0, 1, 2] and traj["r"][0] == 1.0 and traj["r"][-1] == 0.0
    assert traj["theta_deg"][0] == 0.0 and 0 < traj["r"][1] and 0 < traj["theta_deg"][1] < 180
    assert out.exists() and not runstate.resume_path(out).exists()  # resume state removed when done
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "vit.pt"]  # no temp files or snapshots left
    # the stored test metrics are those of the stored float16 weights
    model = models.build("vit", **record["build"])
    io.load_half_state_dict(model, record["weights"])
    x, y = data.load("synthetic", train=False)
    assert metrics.evaluate(model, x, y)["acc"] == pytest.approx(record["test_acc"])


def test_the_zoo_recipe_per_subset():
    assert recipe_module.FULL_RECIPE.epochs == 30 and recipe_module.FULL_RECIPE.warmup_epochs == 3
    assert recipe_module.zoo_recipe(None) == recipe_module.zoo_recipe(1) == recipe_module.FULL_RECIPE
    assert recipe_module.zoo_recipe(0.1) == replace(recipe_module.FULL_RECIPE, epochs=60, warmup_epochs=6)


def test_status_is_final_only_for_the_zoo_recipe_of_the_subset(monkeypatch):
    monkeypatch.setattr(recipe_module, "FULL_RECIPE", replace(TINY, epochs=1, warmup_epochs=1))
    on_subset = recipe_module.zoo_recipe(0.25)
    assert (on_subset.epochs, on_subset.warmup_epochs) == (2, 2)
    assert train.train("vit", "synthetic", 0.25, recipe=on_subset, progress=False)["status"] == "final"
    assert train.train("vit", "synthetic", 0.25, recipe=recipe_module.FULL_RECIPE, progress=False)["status"] == "provisional"
    assert train.train("vit", "synthetic", None, recipe=recipe_module.FULL_RECIPE, progress=False)["status"] == "final"


def test_eval_every_measures_every_kth_epoch_and_the_last_ones(tmp_path):
    assert [e for e in range(1, 21) if train.is_evaluated(e, 20, 5)] == [5, 10, 15, 16, 17, 18, 19, 20]
    assert all(train.is_evaluated(e, 3, 5) for e in (1, 2, 3))
    record = train.train("vit", "synthetic", 0.25, recipe=replace(TINY, epochs=7), progress=False, eval_every=3)
    measured = [h["epoch"] for h in record["history"] if "test_acc" in h]
    assert measured == [3, 4, 5, 6, 7] and all("train_loss" in h for h in record["history"])
    with pytest.raises(ValueError, match="eval_every must be a positive integer, got 0"):
        train.train("vit", "synthetic", recipe=TINY, eval_every=0)


def test_resume_after_interruption_is_exact(tmp_path):
    recipe = replace(TINY, augment=True, drop_path=0.1)  # exercise every random generator
    straight = train.train("vit", "synthetic", recipe=recipe, out=tmp_path / "a.pt", progress=False)
    out = tmp_path / "b.pt"
    assert train.train("vit", "synthetic", recipe=recipe, out=out, progress=False, stop_after_epochs=1) is None
    assert runstate.resume_path(out).exists() and not out.exists()
    assert (tmp_path / "b.pt.trajectory").is_dir()  # the snapshots survive the interruption
    resumed = train.train("vit", "synthetic", recipe=recipe, out=out, progress=False, resume=True)
    for k, v in straight["weights"].items():
        assert torch.equal(v, resumed["weights"][k]), k
    assert straight["history"] == resumed["history"]
    assert straight["trajectory"] == resumed["trajectory"]
    assert torch.equal(straight["snapshots"]["warmup"]["net.head.weight"],
                       resumed["snapshots"]["warmup"]["net.head.weight"])


def test_a_stop_inside_an_epoch_keeps_its_steps_and_resumes_exactly(tmp_path):
    recipe = replace(TINY, augment=True, drop_path=0.1, batch_size=128)  # every random generator used
    half = dict(dataset="synthetic", subset=0.5, recipe=recipe, progress=False)  # 4 steps an epoch
    straight = train.train("vit", out=tmp_path / "a.pt", **half)
    out = tmp_path / "b.pt"
    assert train.train("vit", out=out, stop_after_steps=6, **half) is None
    state = runstate.read_state(runstate.resume_path(out))
    assert state["epoch"] == 1 and state["partial"]["step"] == 2 and runstate.peek_resume(out)["step"] == 2
    assert train.train("vit", out=out, resume=True, stop_after_steps=7, **half) is None  # again, same epoch
    assert runstate.read_state(runstate.resume_path(out))["partial"]["step"] == 3
    resumed = train.train("vit", out=out, resume=True, **half)
    for k, v in straight["weights"].items():
        assert torch.equal(v, resumed["weights"][k]), k
    assert straight["history"] == resumed["history"] and straight["trajectory"] == resumed["trajectory"]
    assert straight["test_acc"] == resumed["test_acc"] and not runstate.resume_path(out).exists()


def test_sigterm_stops_between_steps_and_the_run_continues_exactly(tmp_path):
    """Wherever SIGTERM lands, the command line keeps every finished step and the continued run
    equals an uninterrupted one."""
    args = ["--model", "vit", "--dataset", "synthetic", "--subset", "0.5", "--epochs", "2", "--warmup-epochs", "1",
            "--batch-size", "32", "--augment", "false", "--drop-path", "0", "--no-progress"]
    one_thread = dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic in every run

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "lib.zoo.train", *args, "--out", str(out), *extra]

    straight = tmp_path / "a.pt"
    subprocess.run(command(straight), cwd=REPO, env=one_thread, check=True, capture_output=True)
    out = tmp_path / "b.pt"
    proc = subprocess.Popen(command(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=one_thread)
    deadline = time.monotonic() + 120
    while not runstate.resume_path(out).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # an epoch has finished: the signal lands in the second
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "keeps every finished step" in err and "Traceback" not in err
    subprocess.run(command(out, "--resume"), cwd=REPO, env=one_thread, check=True, capture_output=True)
    a, b = torch.load(straight, weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert a["history"] == b["history"]


def test_resume_without_state_starts_fresh_and_a_different_run_is_set_aside(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert train.train("vit", "synthetic", recipe=TINY, out=out, resume=True, progress=False,
                       stop_after_epochs=1) is None
    assert "no resume state" in capsys.readouterr().err and runstate.resume_path(out).exists()
    mine = runstate.resume_path(out).read_bytes()
    record = train.train("vit", "synthetic", recipe=TINY, seed=5, out=out, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "set aside x.pt.resume.pt (it continues another run: vit on synthetic, seed 0, 2 epochs)" in err
    assert len(err.strip().splitlines()) == 1 and record["seed"] == 5 and len(record["history"]) == 2
    assert (tmp_path / "x.pt.resume.pt.set-aside").read_bytes() == mine  # kept, out of the way


def test_an_unreadable_resume_state_is_set_aside_in_one_line(tmp_path, capsys):
    out, tiny = tmp_path / "x.pt", dict(recipe=TINY, progress=False)  # one step an epoch on a quarter
    train.train("vit", "synthetic", 0.25, out=out, stop_after_epochs=1, **tiny)
    state = runstate.resume_path(out)
    good = state.read_bytes()
    for damaged in (good[:len(good) // 2], b"", b"not a zip file"):
        state.write_bytes(damaged)
        capsys.readouterr()
        record = train.train("vit", "synthetic", 0.25, out=out, resume=True, stop_after_epochs=1, **tiny)
        err = capsys.readouterr().err
        assert err.startswith("set aside x.pt.resume.pt (cannot be read") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err and record is None and runstate.peek_resume(out)["epoch"] == 1
    # a fresh run (no resume) over an unreadable state discards it, also in one line
    state.write_bytes(b"garbage")
    assert len(train.train("vit", "synthetic", 0.25, out=out, **tiny)["history"]) == 2
    err = capsys.readouterr().err
    assert "discarding an old run's resume state" in err and len(err.strip().splitlines()) == 1


def test_a_fresh_run_discards_an_old_state_and_says_so(tmp_path, capsys):
    """An old run's trajectory snapshots must not leak into a new run's trajectory."""
    out = tmp_path / "x.pt"
    train.train("vit", "synthetic", recipe=replace(TINY, epochs=4), out=out, progress=False, stop_after_epochs=3)
    capsys.readouterr()
    record = train.train("vit", "synthetic", recipe=replace(TINY, epochs=1), out=out, progress=False)
    assert "discarding an old run's resume state" in capsys.readouterr().err
    assert record["trajectory"]["epoch"] == [0, 1] and [h["epoch"] for h in record["history"]] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "x.pt"]


def test_one_out_one_writer(tmp_path):
    out = tmp_path / "x.pt"
    with runstate.run_lock(out):
        with pytest.raises(RuntimeError, match="another process is training into"):
            train.train("vit", "synthetic", recipe=TINY, out=out, progress=False)


def test_out_may_not_be_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        train.train("vit", "synthetic", recipe=TINY, out=tmp_path, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(model_name="vgg"), "unknown model 'vgg'.*resnet"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'.*fashion-mnist"),
    (dict(status="done"), "status"),
    (dict(resume=True), "resume"),
    (dict(layout="CC,CM,CM"), "layout applies only to 'resnet' and 'alternet', not 'vit'"),
    (dict(model_name="alternet", layout="CC,CQ"), "bad layout 'CC,CQ'"),
])
def test_bad_arguments(kwargs, match):
    args = dict(model_name="vit", dataset="synthetic", recipe=TINY, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        train.train(**args)


@pytest.mark.parametrize("bad,match", [(dict(epochs=0), "epochs"), (dict(warmup_epochs=3, epochs=2), "warmup"),
                                       (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr")])
def test_bad_recipe(bad, match):
    with pytest.raises(ValueError, match=match):
        recipe_module.Recipe(**bad)


def test_lr_schedule():
    f = [recipe_module.lr_factor(s, 100, 10, 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_cli_trains_and_prints_summary(tmp_path):
    out = tmp_path / "pit.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "lib.zoo.train", "--model", "pit", "--dataset", "synthetic", "--epochs", "1",
         "--warmup-epochs", "0", "--batch-size", "512", "--augment", "false", "--out", str(out), "--no-progress",
         "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pit on synthetic: test accuracy" in proc.stdout
    assert out.exists()
    bad = subprocess.run([sys.executable, "-m", "lib.zoo.train", "--model", "vgg", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'vgg'" in bad.stderr


def test_ddp_two_cpu_processes_match_one(tmp_path):
    """torchrun with 2 gloo processes trains exactly what one process trains (global batch kept)."""
    recipe = replace(TINY, epochs=1, warmup_epochs=0)
    single = train.train("vit", "synthetic", recipe=recipe, progress=False)
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "lib.zoo.train", "--model", "vit", "--dataset", "synthetic", "--epochs", "1", "--warmup-epochs", "0",
         "--batch-size", str(recipe.batch_size), "--lr", str(recipe.lr), "--drop-path", "0",
         "--augment", "false", "--device", "cpu", "--out", str(out), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2
    for k, v in single["weights"].items():
        torch.testing.assert_close(ddp["weights"][k].float(), v.float(), atol=1e-3, rtol=1e-3), k
    assert ddp["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("argv,match", [
    (["--subset", "1.5"], "--subset: must be in (0, 1], got 1.5"),
    (["--subset", "0"], "--subset: must be in (0, 1], got 0"),
    (["--epochs", "0"], "--epochs: must be in [1, ∞), got 0"),
    (["--augment", "flase"], "--augment: expected true or false, got 'flase'"),
    (["--lr", "abc"], "--lr: expected a number in (0, ∞), got 'abc'"),
    (["--epochs", "3", "--warmup-epochs", "5"], "warmup"),
    (["--model", "vit", "--layout", "CC,CM"], "layout applies only to 'resnet' and 'alternet'"),
])
def test_cli_bad_values_fail_in_one_line_before_any_work(tmp_path, capsys, argv, match):
    base = ["--model", "resnet", "--dataset", "synthetic", "--out", str(tmp_path / "m.pt")]
    with pytest.raises(SystemExit) as exit_info:
        train.main(base + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_checks_out_and_register_before_training(tmp_path, capsys):
    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--model", "vit", "--dataset", "synthetic", *argv])
        assert exit_info.value.code == 2
        return capsys.readouterr().err
    assert "is a folder" in refused(["--out", str(tmp_path)])
    assert "is not in data/checkpoints" in refused(["--out", str(tmp_path / "vit-synthetic.pt"), "--register"])
    wrong_name = REPO / "data" / "checkpoints" / "my-vit.pt"
    assert "should be named vit-synthetic.pt" in refused(["--out", str(wrong_name), "--register"])
    right = str(REPO / "data" / "checkpoints" / "vit-synthetic.pt")
    assert "end of warm-up" in refused(["--out", right, "--register", "--no-snapshots"])
    assert not wrong_name.exists() and not Path(right).exists()


def test_epochs_alone_scales_the_warmup(capsys):
    from lib.zoo import recipe
    parser = train._parser()
    args = parser.parse_args(["--model", "vit", "--out", "x.pt", "--epochs", "3"])
    assert recipe_module.recipe_from_args(args, parser) == replace(recipe_module.FULL_RECIPE, epochs=3, warmup_epochs=1)
    assert "warm-up scaled to 1 epoch(s) for --epochs 3" in capsys.readouterr().err
    assert [recipe.scaled_warmup(e) for e in (1, 3, 12, 24, 30, 60, 120)] == [1, 1, 1, 2, 3, 6, 12]
    args = parser.parse_args(["--model", "vit", "--out", "x.pt", "--epochs", "3", "--warmup-epochs", "0"])
    assert recipe_module.recipe_from_args(args, parser).warmup_epochs == 0  # an explicit value stays
    assert recipe.recipe_flags(replace(recipe_module.FULL_RECIPE, epochs=3, warmup_epochs=1, augment=False)) == \
        ["--epochs", "3", "--warmup-epochs", "1", "--augment", "false"]
