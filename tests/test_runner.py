"""The zoo's runner: what it decides for each entry, and a rehearsal of a whole run that is killed
and restarted, driven through the same command line as ``make zoo``, on the synthetic data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lib.zoo import catalog, recipe, runner, runstate, train

REPO = Path(__file__).resolve().parent.parent
TINY = recipe.Recipe(epochs=2, warmup_epochs=1, batch_size=256, drop_path=0.0, augment=False)
QUARTER = 0.25  # of the synthetic training set: one step an epoch


def step_for(entry: catalog.Entry, folder: Path, recipe: recipe.Recipe = TINY, force: bool = False,
             state: Path | None = None) -> runner.Step:
    return runner.plan(entry, recipe, folder, state, force=force)


def test_plan_reads_the_folder(tmp_path):
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    out = tmp_path / entry.filename
    assert step_for(entry, tmp_path).action == "train"
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=out, progress=False, stop_after_epochs=1)
    step = step_for(entry, tmp_path)
    assert (step.action, step.why) == ("resume", "after epoch 1 of 2")
    longer = step_for(entry, tmp_path, replace(TINY, epochs=3))  # another recipe cannot continue this state
    assert longer.action == "train" and "set aside" in longer.why
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=out, progress=False, resume=True)
    assert step_for(entry, tmp_path).action == "register"  # complete, not yet in the manifest
    catalog.register(out, tmp_path)
    assert step_for(entry, tmp_path).action == "skip"
    assert step_for(entry, tmp_path, force=True).action == "train"
    assert step_for(entry, tmp_path, replace(TINY, epochs=3)).action == "train"  # a provisional run of another recipe
    out.write_bytes(out.read_bytes()[:1000])  # damaged: train again
    assert step_for(entry, tmp_path).action == "train"


def test_a_final_checkpoint_is_never_replaced_by_a_shorter_run(tmp_path):
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    out = tmp_path / entry.filename
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=out, progress=False, status="final")
    catalog.register(out, tmp_path)
    step = step_for(entry, tmp_path, replace(TINY, epochs=1))
    assert (step.action, step.why) == ("skip", "final, verified")


def test_an_entry_that_needs_its_warmup_snapshot_is_not_done_without_it(tmp_path):
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=tmp_path / entry.filename, progress=False, keep_snapshots=False)
    assert step_for(entry, tmp_path).action == "train"


def test_child_command():
    entry = catalog.catalogued(catalog.Entry("alternet", subset=0.1, seed=2))
    step = runner.Step(entry, replace(recipe.FULL_RECIPE, epochs=3, warmup_epochs=1), "resume", "")
    argv = runner.child_command(step, Path("state"), "cuda", progress=False, compile=True)
    assert argv[1:] == ["-m", "lib.zoo.train", "--model", "alternet", "--dataset", "fashion-mnist", "--subset", "0.1",
                        "--seed", "2", "--no-snapshots", "--out", str(Path("state") / entry.filename),
                        "--device", "cuda", "--epochs", "3", "--warmup-epochs", "1", "--resume",
                        "--eval-every", str(runner.SUBSET_EVAL_EVERY), "--no-progress", "--compile"]
    full = runner.Step(catalog.catalogued(catalog.Entry("vit")), recipe.FULL_RECIPE, "train", "")
    assert runner.child_command(full, Path("state"), "cpu", progress=True, compile=False)[1:] == [
        "-m", "lib.zoo.train", "--model", "vit", "--dataset", "fashion-mnist", "--out", str(Path("state") / "vit-fashion-mnist.pt"),
        "--device", "cpu", "--resume"]  # the zoo's recipe needs no flags; a fresh run resumes nothing
    small = runner.Step(catalog.catalogued(catalog.Entry("vit", subset=0.1)), recipe.zoo_recipe(0.1), "train", "")
    assert "--epochs" not in runner.child_command(small, Path("state"), "cpu", progress=True, compile=False)


# --------------------------------------------------------------------------------------------------
# The rehearsal: the real entry point, two entries, two jobs, kill -9, SIGTERM, restarts, staging
# --------------------------------------------------------------------------------------------------

#: Two entries: vit on all 1024 synthetic images (10 steps an epoch) and on 10% (1 step an epoch),
#: so the small one is done while the large one is still training.
COMMAND = ["-m", "lib.zoo", "train", "--set", "core", "--only", "vit", "--dataset", "synthetic",
           "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "100", "--augment", "false",
           "--jobs", "2", "--threads", "1", "--device", "cpu"]
BIG = catalog.Entry("vit", "synthetic")
SMALL = catalog.Entry("vit", "synthetic", subset=0.1)


def command(folder: Path, state: Path) -> list[str]:
    return [sys.executable, *COMMAND, "--checkpoint-dir", str(folder), "--state-dir", str(state)]


def start(folder: Path, state: Path) -> subprocess.Popen:
    """The runner in a process group of its own, as a terminal or ``setsid`` starts it."""
    return subprocess.Popen(command(folder, state), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def listed(folder: Path) -> dict:
    path = folder / catalog.MANIFEST_NAME
    return json.loads(path.read_text())["checkpoints"] if path.exists() else {}


def training(out: Path) -> bool:
    """Whether some process holds the run lock of ``out`` (a training is alive)."""
    return runstate.is_training(out)


def resumed_epoch(out: Path) -> int:
    state = runstate.peek_resume(out)
    return 0 if state is None else state["epoch"]


def test_rehearsal_killed_and_restarted(tmp_path):
    folder, state = tmp_path / "checkpoints" / "next", tmp_path / "cache" / "zoo"
    big = state / BIG.filename  # trains in the state folder, staged into the checkpoint folder when done

    # 1. kill -9 the runner while the big entry trains and the small one is staged: the child dies too
    proc = start(folder, state)
    wait_for(lambda: SMALL.key in listed(folder) and resumed_epoch(big) >= 1, "the small entry and one big epoch")
    proc.kill()
    proc.communicate()
    wait_for(lambda: not training(big), "the orphaned training to stop", timeout_s=30)
    assert set(listed(folder)) == {SMALL.key} and not (folder / BIG.filename).exists() and not big.exists()
    assert not (state / SMALL.filename).exists()  # staged: moved out of the state folder
    done_at = resumed_epoch(big)
    assert done_at == 1

    # 2. restart, then SIGTERM to the runner's process group and once more to the runner (as make
    #    passes it on): the child, in a session of its own, is asked once, by the runner, which says
    #    how to continue and ignores the repeated request
    proc = start(folder, state)
    wait_for(lambda: training(big), "the restarted training")
    trainers = children(proc.pid)
    assert len(trainers) == 1 and os.getsid(trainers[0]) != os.getsid(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.2)  # the second request arrives while the runner is stopping its child
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in out, out
    assert f"skip     {SMALL.key}: provisional, verified" in out
    assert f"resume   {BIG.key}: after epoch {done_at} of 2" in out
    assert "stopped: 1 training(s) interrupted" in out and "Run the same command again" in out
    assert not training(big) and resumed_epoch(big) >= done_at

    # 3. restart to the end: the small entry is skipped, the big one continues and is staged
    finished = subprocess.run(command(folder, state), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"skip     {SMALL.key}" in finished.stdout and f"resume   {BIG.key}" in finished.stdout
    assert f"done     {BIG.key}: test acc." in finished.stdout and ", staged" in finished.stdout
    assert "zoo: 1 trained, 1 already done, 0 failed" in finished.stdout
    manifest = listed(folder)
    assert set(manifest) == {SMALL.key, BIG.key}
    for entry in (SMALL, BIG):
        record = catalog.read_record(folder / entry.filename)
        item = manifest[entry.key]
        assert item["sha256"] == catalog.sha256(folder / entry.filename)
        assert item["test_acc"] == round(record["test_acc"], 2) and item["epochs"] == 2
        assert item["status"] == "provisional" and item["stages"] == ["final", "warmup"]
        assert [h["epoch"] for h in record["history"]] == [1, 2]  # every epoch once, none lost
        assert record["trajectory"]["epoch"] == [0, 1, 2]
    leftovers = sorted(p.name for p in folder.iterdir() if p.name not in (".locks", ".manifest.lock"))
    assert leftovers == sorted([catalog.MANIFEST_NAME, SMALL.filename, BIG.filename])
    assert [p.name for p in state.iterdir()] == [".locks"]  # nothing of a run is left in the state folder

    # 4. once more: nothing to do
    again = subprocess.run(command(folder, state), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "zoo: 0 trained, 2 already done, 0 failed" in again.stdout
    assert listed(folder) == manifest


def test_a_run_finished_outside_the_runner_is_staged(tmp_path):
    folder, state = tmp_path / "next", tmp_path / "state"
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=state / entry.filename, progress=False)
    step = step_for(entry, folder, state=state)
    assert (step.action, step.why) == ("stage", "finished, not yet staged")
    lines: list[str] = []
    assert runner.run([(entry, TINY)], folder, state, echo=lines.append) == 0
    assert any(line.startswith(f"done     {entry.key}") and line.endswith(", staged") for line in lines), lines
    assert set(listed(folder)) == {entry.key} and not (state / entry.filename).exists()
    assert step_for(entry, folder, state=state).action == "skip"


def test_the_runner_waits_for_a_run_another_process_holds(tmp_path):
    """A training started by hand (here: another process) takes a job slot; when it ends, it is staged."""
    folder, state = tmp_path / "next", tmp_path / "state"
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    out = state / entry.filename
    other = subprocess.Popen([sys.executable, "-c", (
        "import time; from lib.zoo import train; "
        f"train.train('vit', 'synthetic', {QUARTER}, recipe=train.{TINY!r}, out={str(out)!r}, progress=False, "
        "epoch_log=lambda e: time.sleep(1))")], cwd=REPO)
    try:
        wait_for(lambda: training(out), "the other process to take the lock", timeout_s=60)
        lines: list[str] = []
        assert runner.run([(entry, TINY)], folder, state, jobs=1, echo=lines.append) == 0
    finally:
        other.wait(timeout=60)
    assert any(line.startswith(f"busy     {entry.key}") for line in lines), lines
    assert any(line.startswith(f"done     {entry.key}") and line.endswith(", staged") for line in lines), lines
    assert not any(line.startswith(("train ", "resume ")) for line in lines)  # it never trained it twice
    assert set(listed(folder)) == {entry.key}


def test_a_staged_file_must_be_the_run_asked_for(tmp_path):
    folder, state = tmp_path / "next", tmp_path / "state"
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    other = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER, seed=1))
    train.train("vit", "synthetic", QUARTER, recipe=TINY, seed=1, out=state / entry.filename, progress=False)
    with pytest.raises(catalog.ZooError, match="is not the finished vit-synthetic-sub25 run asked for"):
        runner.stage(entry, TINY, state, folder)
    assert other.key != entry.key and not listed(folder)


def test_progress_reports_staged_interrupted_and_waiting(tmp_path):
    folder, state = tmp_path / "next", tmp_path / "state"
    done = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    half = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER, seed=1))
    later = catalog.catalogued(catalog.Entry("resnet", "synthetic", QUARTER))
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=state / done.filename, progress=False)
    runner.stage(done, TINY, state, folder)
    train.train("vit", "synthetic", QUARTER, recipe=TINY, seed=1, out=state / half.filename, progress=False,
                stop_after_epochs=1)
    rows = runner.progress([(done, TINY), (half, TINY), (later, TINY)], folder, state)
    assert [(r.status, r.epoch, r.epochs) for r in rows] == [("staged", 2, 2), ("interrupted", 1, 2), ("waiting", 0, 2)]
    assert rows[0].hours_left == 0 and rows[0].test_acc == listed(folder)[done.key]["test_acc"]
    assert rows[1].hours > 0 and rows[1].hours_left is not None and rows[1].test_acc is not None
    assert rows[2].hours_left is None  # no resnet measured yet
