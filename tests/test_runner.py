"""The zoo's runner: what it decides for each entry, and a rehearsal of a whole run that is killed
and restarted, driven through the same command line as ``make zoo``, on the synthetic data."""
from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path


from lib import catalog, runner, runstate, train

REPO = Path(__file__).resolve().parent.parent
TINY = train.Recipe(epochs=2, warmup_epochs=1, batch_size=256, drop_path=0.0, augment=False)
QUARTER = 0.25  # of the synthetic training set: one step an epoch


def step_for(entry: catalog.Entry, folder: Path, recipe: train.Recipe = TINY, force: bool = False) -> runner.Step:
    return runner.plan(entry, recipe, folder, force)


def test_plan_reads_the_folder(tmp_path):
    entry = catalog.catalogued(catalog.Entry("vit", "synthetic", QUARTER))
    out = tmp_path / entry.filename
    assert step_for(entry, tmp_path).action == "train"
    train.train("vit", "synthetic", QUARTER, recipe=TINY, out=out, progress=False, stop_after_epochs=1)
    step = step_for(entry, tmp_path)
    assert (step.action, step.why) == ("resume", "after epoch 1 of 2")
    longer = step_for(entry, tmp_path, replace(TINY, epochs=3))  # another recipe cannot continue this state
    assert longer.action == "train" and "discarded" in longer.why
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
    step = runner.Step(entry, replace(train.FULL_RECIPE, epochs=3, warmup_epochs=1), "resume", "")
    argv = runner.child_command(step, Path("ck"), "cuda", progress=False, compile=True)
    assert argv[1:] == ["-m", "lib.train", "--model", "alternet", "--dataset", "fashion-mnist", "--subset", "0.1",
                        "--seed", "2", "--no-snapshots", "--out", str(Path("ck") / entry.filename),
                        "--device", "cuda", "--epochs", "3", "--warmup-epochs", "1", "--resume",
                        "--no-progress", "--compile"]


# --------------------------------------------------------------------------------------------------
# The rehearsal: the real entry point, two entries, two jobs, kill -9, SIGTERM, restarts
# --------------------------------------------------------------------------------------------------

#: Two entries: vit on all 1024 synthetic images (10 steps an epoch) and on 10% (1 step an epoch),
#: so the small one is done while the large one is still training.
COMMAND = ["-m", "lib.zoo", "train", "--set", "core", "--only", "vit", "--dataset", "synthetic",
           "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "100", "--augment", "false",
           "--jobs", "2", "--threads", "1", "--device", "cpu"]
BIG = catalog.Entry("vit", "synthetic")
SMALL = catalog.Entry("vit", "synthetic", subset=0.1)


def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *COMMAND, "--checkpoint-dir", str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    path = runstate.lock_path(out)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def resumed_epoch(out: Path) -> int:
    state = runstate.peek_resume(out)
    return 0 if state is None else state["epoch"]


def test_rehearsal_killed_and_restarted(tmp_path):
    folder = tmp_path / "checkpoints"
    big = folder / BIG.filename

    # 1. kill -9 the runner while the big entry trains and the small one is done: the child dies too
    proc = start(folder)
    wait_for(lambda: SMALL.key in listed(folder) and resumed_epoch(big) >= 1, "the small entry and one big epoch")
    proc.kill()
    proc.communicate()
    wait_for(lambda: not training(big), "the orphaned training to stop", timeout_s=30)
    assert set(listed(folder)) == {SMALL.key} and not big.exists()
    done_at = resumed_epoch(big)
    assert done_at == 1

    # 2. restart, then SIGTERM: the runner stops its child and says how to continue
    proc = start(folder)
    wait_for(lambda: training(big), "the restarted training")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert f"skip     {SMALL.key}: provisional, verified" in out
    assert f"resume   {BIG.key}: after epoch {done_at} of 2" in out
    assert "stopped: 1 training(s) interrupted" in out and "Run the same command again" in out
    assert not training(big) and resumed_epoch(big) >= done_at

    # 3. restart to the end: the small entry is skipped, the big one continues, the manifest is exact
    finished = subprocess.run([sys.executable, *COMMAND, "--checkpoint-dir", str(folder)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"skip     {SMALL.key}" in finished.stdout and f"resume   {BIG.key}" in finished.stdout
    assert f"done     {BIG.key}: test acc." in finished.stdout
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

    # 4. once more: nothing to do
    again = subprocess.run([sys.executable, *COMMAND, "--checkpoint-dir", str(folder)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "zoo: 0 trained, 2 already done, 0 failed" in again.stdout
    assert listed(folder) == manifest
