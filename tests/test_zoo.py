"""The zoo: checkpoint round trip, sha256 verification, and clear errors for every failure."""
import json
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from lib.core import models
from lib.zoo import __main__ as cli
from lib.zoo import catalog, checkpoints, recipe, runner, train

RECIPE = recipe.Recipe(epochs=1, warmup_epochs=1, batch_size=512, drop_path=0.0, augment=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registered vit checkpoint in a private checkpoint folder."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = folder / catalog.Entry("vit", "synthetic").filename
    train.train("vit", "synthetic", recipe=RECIPE, out=out, progress=False)
    catalog.register(out, checkpoint_dir=folder)
    return folder, out


@pytest.fixture
def folder(trained, tmp_path):
    """A fresh copy of the registered folder that a test may damage."""
    src, _ = trained
    dst = tmp_path / "checkpoints"
    shutil.copytree(src, dst)
    return dst


def test_manifest_entry(trained):
    folder, out = trained
    entry = catalog.read_manifest(folder)["checkpoints"]["vit-synthetic"]
    assert entry["sha256"] == catalog.sha256(out) and entry["bytes"] == out.stat().st_size
    assert entry["status"] == "provisional" and entry["epochs"] == 1 and entry["stages"] == ["final", "warmup"]
    assert entry["params"] == models.count_parameters(models.build("vit"))
    record = torch.load(out, weights_only=True)
    assert entry["test_nll_last_epochs"] == [round(h["test_loss"], 4) for h in record["history"]][-5:]


def test_round_trip(folder):
    model, record = checkpoints.load("vit", "synthetic", checkpoint_dir=folder)
    assert not model.training and "weights" not in record and record["manifest"]["file"] == "vit-synthetic.pt"
    raw = torch.load(folder / "vit-synthetic.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["weights"][k].to(v.dtype)), k
    warm, _ = checkpoints.load("vit", "synthetic", stage="warmup", checkpoint_dir=folder)
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), model.state_dict().values()))


def test_loading_prints_nothing(folder, capsys):
    checkpoints.load("vit", "synthetic", checkpoint_dir=folder)
    assert capsys.readouterr() == ("", "")


def test_corrupted_file_fails_checksum(folder):
    path = folder / "vit-synthetic.pt"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(catalog.ZooError, match="checksum mismatch.*git checkout.*python -m lib.zoo.train --model vit"):
        checkpoints.load("vit", "synthetic", checkpoint_dir=folder)


def test_unreadable_file(folder):
    path = folder / "vit-synthetic.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(catalog.ZooError, match="cannot read checkpoint"):
        checkpoints.load_checkpoint(path)


def test_missing_file_and_entry(folder):
    (folder / "vit-synthetic.pt").unlink()
    with pytest.raises(catalog.ZooError, match="missing.*git checkout"):
        checkpoints.load("vit", "synthetic", checkpoint_dir=folder)
    with pytest.raises(catalog.ZooError, match="no checkpoint 'resnet-synthetic-sub10'.*--subset 0.1.*make zoo"):
        checkpoints.load("resnet", "synthetic", subset=0.1, checkpoint_dir=folder)


def test_wrong_architecture(folder):
    path = folder / "vit-synthetic.pt"
    with pytest.raises(catalog.ZooError, match="holds a 'vit' model, not 'resnet'"):
        checkpoints.load_checkpoint(path, expect_model="resnet")
    record = torch.load(path, weights_only=True)
    record["model"] = "resnet"  # a record that lies about its architecture
    torch.save(record, path)
    with pytest.raises(catalog.ZooError, match="do not fit the 'resnet' architecture"):
        checkpoints.load_checkpoint(path)


def test_bad_names(folder):
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        checkpoints.load("vgg", checkpoint_dir=folder)
    with pytest.raises(ValueError, match="unknown stage 'best'.*final, warmup"):
        checkpoints.load("vit", "synthetic", stage="best", checkpoint_dir=folder)


def test_bad_manifest(folder):
    (folder / catalog.MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(catalog.ZooError, match="not valid JSON"):
        checkpoints.load("vit", "synthetic", checkpoint_dir=folder)


def test_register_checks_location_and_name(folder, tmp_path):
    elsewhere = tmp_path / "vit-synthetic.pt"
    shutil.copy(folder / "vit-synthetic.pt", elsewhere)
    with pytest.raises(catalog.ZooError, match="not in"):
        catalog.register(elsewhere, checkpoint_dir=folder)
    renamed = folder / "my-vit.pt"
    shutil.copy(folder / "vit-synthetic.pt", renamed)
    with pytest.raises(catalog.ZooError, match="should be named vit-synthetic.pt"):
        catalog.register(renamed, checkpoint_dir=folder)


def test_entry_keys():
    assert catalog.Entry("vit").key == "vit-fashion-mnist"
    assert catalog.Entry("vit", subset=0.1, seed=2).key == "vit-fashion-mnist-sub10-seed2"
    assert "--subset 0.1 --seed 2" in catalog.Entry("vit", subset=0.1, seed=2).train_command()
    assert {e.model for e in catalog.ZOO} == set(models.MODELS)
    assert {e.model for e in catalog.ZOO if e.subset == 0.1} == {"resnet", "vit", "alternet"}
    assert catalog.Entry("vit", subset=0.104).key == "vit-fashion-mnist-sub10.4"  # never filed under 10%
    assert catalog.Entry("vit", subset=0.25).key == "vit-fashion-mnist-sub25"


def test_the_main_set():
    """The chapters' main models: every architecture on all the data, then the headline three on 10% × 3 seeds."""
    assert list(catalog.MAIN[:len(models.MODELS)]) == [catalog.Entry(m) for m in models.MODELS]
    rest = catalog.MAIN[len(models.MODELS):]
    assert {(e.model, e.seed) for e in rest} == {(m, s) for m in catalog.HEADLINE_MODELS for s in catalog.HEADLINE_SEEDS}
    assert all(e.subset == 0.1 and e.layout is None for e in rest) and [e.seed for e in rest] == sorted(e.seed for e in rest)
    assert catalog.SETS["main"] == catalog.MAIN


def test_load_checks_the_identity_of_the_file(folder):
    """A file registered under another entry's key is refused on load, not silently returned."""
    other = folder / "vit-synthetic-sub10.4.pt"
    train.train("vit", "synthetic", 0.104, recipe=replace(RECIPE, batch_size=64), out=other, progress=False)
    catalog.register(other, checkpoint_dir=folder)
    manifest = json.loads((folder / catalog.MANIFEST_NAME).read_text())
    manifest["checkpoints"]["vit-synthetic-sub10"] = manifest["checkpoints"].pop("vit-synthetic-sub10.4")
    (folder / catalog.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(catalog.ZooError, match=r"holds vit-synthetic-sub10.4 .*not the vit-synthetic-sub10 asked for"):
        checkpoints.load("vit", "synthetic", subset=0.1, checkpoint_dir=folder)
    assert checkpoints.load("vit", "synthetic", checkpoint_dir=folder)[1]["subset"] is None


def test_swap_moves_a_complete_staged_set_only(folder, tmp_path):
    staging, state = folder / "next", tmp_path / "state"
    entries = [catalog.catalogued(catalog.Entry("vit", "synthetic")), catalog.catalogued(catalog.Entry("vit", "synthetic", 0.1))]
    final = replace(RECIPE, batch_size=64)  # the 10% subset of the synthetic set has about 100 images

    def staged(entry, status):  # trained in the state folder, staged as the runner does
        train.train("vit", "synthetic", entry.subset, recipe=final, out=state / entry.filename, progress=False,
                    status=status)
        runner.stage(entry, final, state, staging)

    staged(entries[0], "final")
    old = catalog.read_manifest(folder)["checkpoints"]["vit-synthetic"]
    with pytest.raises(catalog.ZooError, match="not complete .not staged yet: vit-synthetic-sub10."):
        catalog.swap(entries, staging, folder)
    assert catalog.read_manifest(folder)["checkpoints"]["vit-synthetic"] == old  # nothing moved
    staged(entries[1], "provisional")
    with pytest.raises(catalog.ZooError, match="not final: vit-synthetic-sub10"):
        catalog.swap(entries, staging, folder)
    staged(entries[1], "final")
    moved = catalog.swap(entries, staging, folder)
    assert [m["file"] for m in moved] == [e.filename for e in entries] and {m["status"] for m in moved} == {"final"}
    listed = catalog.read_manifest(folder)["checkpoints"]
    assert listed["vit-synthetic"]["sha256"] != old["sha256"] and listed["vit-synthetic"]["status"] == "final"
    assert not staging.exists()  # the staging area goes once empty
    ok, problems = catalog.check(folder)
    assert set(ok) == {"vit-synthetic", "vit-synthetic-sub10"} and not problems
    assert checkpoints.load("vit", "synthetic", 0.1, checkpoint_dir=folder)[1]["status"] == "final"


def test_cli_train_keeps_the_state_folder_out_of_the_work_tree(monkeypatch, capsys):
    monkeypatch.setattr(runner, "run", lambda *a, **kw: pytest.fail("started training"))
    with pytest.raises(SystemExit):
        cli.main(["train", "--state-dir", str(catalog.REPO / "data" / "state")])
    assert "must lie outside the work tree" in capsys.readouterr().err


def test_shipped_manifest_is_consistent():
    """Every checkpoint in the repository's manifest is present and matches its checksum."""
    listed = catalog.read_manifest()["checkpoints"]
    if not listed:
        pytest.skip("no shipped checkpoints yet")
    for key, entry in listed.items():
        path = catalog.CHECKPOINT_DIR / entry["file"]
        assert path.exists(), key
        assert catalog.sha256(path) == entry["sha256"], key
    assert {e.key for e in catalog.ZOO} <= set(listed)


def test_cli_list_and_verify(capsys):
    listed = catalog.read_manifest()["checkpoints"]
    if not listed:
        pytest.skip("no shipped checkpoints yet")
    assert cli.main(["verify"]) == 0
    assert capsys.readouterr().out.count("ok ") == len(listed)
    assert cli.main(["list", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert all(f"`{key}`" in table for key in listed)


def test_layout_variant_round_trip_without_snapshots(tmp_path):
    """A placement ablation is its own zoo entry: its layout is in the key, the record and the model."""
    entry = catalog.Entry("alternet", "synthetic", layout="cc,mc,mc", snapshots=False)
    assert entry.key == "alternet-CC.MC.MC-synthetic" and entry.layout == "CC,MC,MC"
    assert "--layout CC,MC,MC --no-snapshots" in entry.train_command()
    out = tmp_path / entry.filename
    train.train("alternet", "synthetic", recipe=RECIPE, out=out, progress=False, layout="CC,MC,MC",
                keep_snapshots=False)
    listed = catalog.register(out, checkpoint_dir=tmp_path)
    assert listed["layout"] == "CC,MC,MC" and listed["stages"] == ["final"]
    model, record = checkpoints.load("alternet", "synthetic", layout="CC,MC,MC", checkpoint_dir=tmp_path)
    assert model.net.layout == "CC,MC,MC" and record["build"]["layout"] == "CC,MC,MC"
    with pytest.raises(catalog.ZooError, match="has no 'warmup' snapshot"):
        checkpoints.load("alternet", "synthetic", layout="CC,MC,MC", stage="warmup", checkpoint_dir=tmp_path)
    with pytest.raises(catalog.ZooError, match="no checkpoint 'alternet-synthetic'.*--model alternet"):
        checkpoints.load("alternet", "synthetic", checkpoint_dir=tmp_path)  # the default layout is another entry


def test_ablation_zoo_entries():
    assert catalog.Entry("alternet", layout="CC,CM,CM") == catalog.Entry("alternet")  # its own layout is no variant
    assert catalog.Entry("alternet", layout="CC,CC,CM").key == "alternet-CC.CC.CM-fashion-mnist"
    for subset in (0.1, None):  # three seeds of the headline models on 10% and on all the data
        headline = {(e.model, e.seed) for e in catalog.ZOO + catalog.SEEDS if e.subset == subset and e.layout is None
                    and e.model in catalog.HEADLINE_MODELS}
        assert headline == {(m, s) for m in ("resnet", "vit", "alternet") for s in catalog.HEADLINE_SEEDS}
    layouts = {e.layout for e in catalog.ABLATIONS if e.layout and e.subset == 0.1}
    assert layouts == set(catalog.ABLATION_LAYOUTS.values())
    assert not any(e.snapshots for e in catalog.ABLATIONS + catalog.SEEDS)
    assert all(e.snapshots for e in catalog.ZOO)  # the chapters load every seed-0 model at the end of warm-up
    assert len({e.key for e in catalog.SETS["all"]}) == len(catalog.SETS["all"])  # no two entries share a file
    loaded_key = catalog.Entry("alternet", subset=0.1, seed=2)
    assert "--no-snapshots" in catalog.catalogued(loaded_key).train_command()


def test_priority_order():
    """A run cut short delivers the seed-0 models the chapters load first, then seeds, then ablations."""
    order = list(catalog.PRIORITY)
    assert order == list(catalog.ZOO) + list(catalog.SEEDS) + list(catalog.ABLATIONS)
    assert [e.seed for e in order[:len(catalog.ZOO)]] == [0] * len(catalog.ZOO)
    assert {e.seed for e in catalog.SEEDS} == {1, 2} and all(e.layout is None for e in catalog.SEEDS)
    assert all(e.layout is not None for e in catalog.ABLATIONS)
    assert catalog.SETS["all"] == catalog.PRIORITY


def test_cli_train_selects_entries_and_schedules(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "run", lambda work, folder, state, **kw: calls.append((work, kw)) or 0)
    assert cli.main(["train", "--set", "ablation", "--data", "full", "--short"]) == 0
    work, kw = calls.pop()
    assert [e.layout for e, _ in work] == [catalog.ABLATION_LAYOUTS[n] for n in catalog.FULL_DATA_ABLATIONS]
    assert all(r.epochs == 2 and r.warmup_epochs == 1 for _, r in work) and kw["jobs"] == 1
    assert cli.main(["train", "--set", "seeds", "--data", "sub10", "--only", "vit", "--short", "--jobs", "3"]) == 0
    work, kw = calls.pop()
    assert [(e.seed, r.epochs) for e, r in work] == [(1, 10), (2, 10)] and kw["jobs"] == 3
    assert cli.main(["train"]) == 0  # the main set, the zoo's recipe for each subset, in priority order
    work, _ = calls.pop()
    assert [e for e, _ in work] == list(catalog.MAIN) and all(r == recipe.zoo_recipe(e.subset) for e, r in work)
    assert {r.epochs for e, r in work if e.subset is None} == {recipe.FULL_RECIPE.epochs}
    assert cli.main(["train", "--set", "all", "--lr", "0.002"]) == 0  # a recipe flag applies to every entry
    work, _ = calls.pop()
    assert [e for e, _ in work] == list(catalog.PRIORITY) and {r.lr for _, r in work} == {0.002}
    assert all(r == replace(recipe.zoo_recipe(e.subset), lr=0.002) for e, r in work)
    assert cli.main(["train", "--only", "vit", "--epochs", "6", "--dataset", "synthetic"]) == 0
    work, _ = calls.pop()  # --epochs alone scales the warm-up: 3/30 of 6 epochs, at least one
    assert {(e.dataset, r.epochs, r.warmup_epochs) for e, r in work} == {("synthetic", 6, 1)}


@pytest.mark.parametrize("argv,match", [
    (["--short", "--epochs", "3"], "--short sets the epochs"),
    (["--set", "ablation", "--only", "pit"], "nothing to train"),
    (["--only"], "expected at least one argument"),          # e.g. --only $MODELS with MODELS unset
    (["--only", "vgg"], "invalid choice: 'vgg'"),
    (["--epochs", "0"], "--epochs: must be in"),
    (["--augment", "flase"], "expected true or false, got 'flase'"),
    (["--warmup-epochs", "0"], "keep the warm-up snapshot the chapters load"),
    (["--jobs", "0"], "--jobs: must be in"),
])
def test_cli_train_refuses_bad_input_before_any_work(monkeypatch, capsys, argv, match):
    monkeypatch.setattr(runner, "run", lambda *a, **kw: pytest.fail("started training"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


@pytest.mark.parametrize("text,match", [
    ("{}", r'should hold \{"checkpoints"'), ("[]", r'should hold \{"checkpoints"'),
    ('{"checkpoints": {"vit-synthetic": 3}}', "is not an object"),
])
def test_malformed_manifest_says_what_and_how(folder, text, match):
    (folder / catalog.MANIFEST_NAME).write_text(text)
    with pytest.raises(catalog.ZooError, match=match + ".*git checkout -- "):
        checkpoints.load("vit", "synthetic", checkpoint_dir=folder)


def test_manifest_entry_missing_a_field(folder):
    path = folder / catalog.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    del manifest["checkpoints"]["vit-synthetic"]["sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(catalog.ZooError, match="'vit-synthetic' lacks sha256; re-register it with `python -m lib.zoo "
                                           "register .*vit-synthetic.pt`"):
        catalog.read_manifest(folder)


def test_restore_hints_work_from_the_repository_root():
    """The hint names the manifest by its path from the root, which is where `git checkout` runs."""
    hint = catalog._restore_hint(catalog.CHECKPOINT_DIR / catalog.MANIFEST_NAME)
    assert "`git checkout -- data/checkpoints/MANIFEST.json`" in hint
    assert subprocess.run(["git", "ls-files", "--error-unmatch", "data/checkpoints/MANIFEST.json"],
                          cwd=catalog.REPO, capture_output=True).returncode == 0


def test_verify_says_what_is_wrong_and_how_to_fix_it(folder, capsys):
    args = ["verify", "--checkpoint-dir", str(folder)]
    assert cli.main(args) == 0 and "ok  vit-synthetic" in capsys.readouterr().out
    path = folder / "vit-synthetic.pt"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    shutil.copy(path, folder / "stray.pt")
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "BAD vit-synthetic: checksum mismatch" in out and "fix: restore it with `git checkout -- " in out
    assert "BAD stray: stray.pt is in the folder but not in the manifest" in out
    path.unlink()
    assert cli.main(args) == 1 and "BAD vit-synthetic: file" in capsys.readouterr().out
    (folder / catalog.MANIFEST_NAME).unlink()  # a deleted manifest is an error, not an empty zoo
    assert cli.main(args) == 1
    assert "there is no manifest at" in capsys.readouterr().err


def test_register_refuses_an_entry_without_the_snapshot_the_chapters_load(tmp_path):
    out = tmp_path / "vit-synthetic.pt"
    train.train("vit", "synthetic", recipe=RECIPE, out=out, progress=False, keep_snapshots=False)
    with pytest.raises(catalog.ZooError, match="no warm-up snapshot, which the chapters load"):
        catalog.register(out, checkpoint_dir=tmp_path)


def test_the_whole_catalogue_fits_the_size_budget():
    """Float16 weights take 2 bytes a parameter, twice with a warm-up snapshot: the fully trained zoo
    (every entry of the catalogue) must stay under the 96 MB the repository allows for checkpoints."""
    params = {}
    total = 0
    for e in catalog.PRIORITY:
        if (e.model, e.layout) not in params:
            params[e.model, e.layout] = models.count_parameters(
                models.build(e.model, **({"layout": e.layout} if e.layout else {})))
        total += 2 * params[e.model, e.layout] * (2 if e.snapshots else 1) + 50_000  # + record and pickle overhead
    shipped = {item["file"]: item["bytes"] for item in catalog.read_manifest()["checkpoints"].values()}
    vit = catalog.Entry("vit")  # the estimate agrees with a shipped file to 2%
    assert shipped[vit.filename] == pytest.approx(4 * params["vit", None] + 50_000, rel=0.02)
    assert total < 96e6, f"the catalogue needs about {total / 1e6:.0f} MB"


def test_entry_for_a_model_or_a_layout(folder):
    assert checkpoints.entry_for("vit", 0.1, seed=2) == catalog.Entry("vit", subset=0.1, seed=2)
    assert not checkpoints.entry_for("vit", 0.1, seed=2).snapshots  # the catalogue's own entry
    assert checkpoints.entry_for("CC,CC,CC") == catalog.Entry("resnet")
    assert checkpoints.entry_for("cc,cm,cm") == catalog.Entry("alternet")
    assert checkpoints.entry_for("CC,MC,MC", 0.1).key == "alternet-CC.MC.MC-fashion-mnist-sub10"
    with pytest.raises(ValueError, match="bad layout 'vgg'"):
        checkpoints.entry_for("vgg")
    trained, untrained = checkpoints.entry_for("vit", dataset="synthetic"), checkpoints.entry_for("resnet", dataset="synthetic")
    assert checkpoints.is_trained(trained, folder) and not checkpoints.is_trained(untrained, folder)
    assert checkpoints.record(untrained, folder) is None
    rec = checkpoints.record(trained, folder)
    assert rec["manifest"]["file"] == "vit-synthetic.pt" and "weights" not in rec


def test_cli_register_goes_to_the_zoo_folder_unless_told(folder, tmp_path, capsys):
    path = folder / "vit-synthetic.pt"
    assert cli.main(["register", str(path)]) == 1  # not in data/checkpoints: refused, nothing written
    assert "is not in data/checkpoints" in capsys.readouterr().err
    (folder / catalog.MANIFEST_NAME).unlink()
    assert cli.main(["register", str(path), "--checkpoint-dir", str(folder)]) == 0
    assert "registered vit-synthetic.pt" in capsys.readouterr().out
    assert set(catalog.read_manifest(folder)["checkpoints"]) == {"vit-synthetic"}


def _manifest_with(folder, keys):
    """A manifest in ``folder`` that lists ``keys`` (with the shipped manifest's fields; no files)."""
    template = next(iter(catalog.read_manifest(must_exist=True)["checkpoints"].values()))
    folder.mkdir(exist_ok=True)
    (folder / catalog.MANIFEST_NAME).write_text(json.dumps({"checkpoints": {k: template for k in keys}}))
    return folder


def test_seed_runs_subset_prefers_all_of_the_data_once_every_run_is_trained(tmp_path):
    def keys(subset, names=("resnet", "vit"), seeds=(0, 1)):
        return [checkpoints.entry_for(n, subset, s).key for n in names for s in seeds]

    ask = dict(names=("resnet", "vit"), seeds=(0, 1))
    both = _manifest_with(tmp_path / "both", keys(None) + keys(0.1))
    assert checkpoints.seed_runs_subset(**ask, checkpoint_dir=both) is None
    # one full-data run short: the 10% runs, which are all there
    partial = _manifest_with(tmp_path / "partial", keys(None)[:-1] + keys(0.1))
    assert checkpoints.seed_runs_subset(**ask, checkpoint_dir=partial) == 0.1
    lacking = _manifest_with(tmp_path / "lacking", keys(None)[:-1] + keys(0.1)[1:])
    with pytest.raises(catalog.ZooError, match="missing on 10% of the data: resnet-fashion-mnist-sub10;"):
        checkpoints.seed_runs_subset(**ask, checkpoint_dir=lacking)


def test_load_seed_runs_loads_every_name_with_every_seed_in_order():
    runs, records = checkpoints.load_seed_runs(["vit", "resnet"], [1, 0], 0.1)
    assert list(runs) == list(records) == [("vit", 1), ("vit", 0), ("resnet", 1), ("resnet", 0)]
    assert all(records[name, seed]["seed"] == seed and records[name, seed]["subset"] == 0.1
               and records[name, seed]["model"] == name for name, seed in records)
    assert not any(model.training for model in runs.values())
    with pytest.raises(catalog.ZooError, match="no checkpoint"):
        checkpoints.load_seed_runs(["vit"], [0], 0.5)
