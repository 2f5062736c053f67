"""The zoo: checkpoint round trip, sha256 verification, and clear errors for every failure."""
import json
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from lib import catalog, models, recipe, runner, train, zoo

RECIPE = train.Recipe(epochs=1, warmup_epochs=1, batch_size=512, drop_path=0.0, augment=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A registered vit checkpoint in a private checkpoint folder."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = folder / zoo.Entry("vit", "synthetic").filename
    train.train("vit", "synthetic", recipe=RECIPE, out=out, progress=False)
    zoo.register(out, checkpoint_dir=folder)
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
    entry = zoo.read_manifest(folder)["checkpoints"]["vit-synthetic"]
    assert entry["sha256"] == zoo.sha256(out) and entry["bytes"] == out.stat().st_size
    assert entry["status"] == "provisional" and entry["epochs"] == 1 and entry["stages"] == ["final", "warmup"]
    assert entry["params"] == models.count_parameters(models.build("vit"))
    record = torch.load(out, weights_only=True)
    assert entry["test_nll_last_epochs"] == [round(h["test_loss"], 4) for h in record["history"]][-5:]


def test_round_trip(folder):
    model, record = zoo.load("vit", "synthetic", checkpoint_dir=folder)
    assert not model.training and "weights" not in record and record["manifest"]["file"] == "vit-synthetic.pt"
    raw = torch.load(folder / "vit-synthetic.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["weights"][k].to(v.dtype)), k
    warm, _ = zoo.load("vit", "synthetic", stage="warmup", checkpoint_dir=folder)
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), model.state_dict().values()))


def test_loading_prints_nothing(folder, capsys):
    zoo.load("vit", "synthetic", checkpoint_dir=folder)
    assert capsys.readouterr() == ("", "")


def test_corrupted_file_fails_checksum(folder):
    path = folder / "vit-synthetic.pt"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(zoo.ZooError, match="checksum mismatch.*git checkout.*python -m lib.train --model vit"):
        zoo.load("vit", "synthetic", checkpoint_dir=folder)


def test_unreadable_file(folder):
    path = folder / "vit-synthetic.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(zoo.ZooError, match="cannot read checkpoint"):
        zoo.load_checkpoint(path)


def test_missing_file_and_entry(folder):
    (folder / "vit-synthetic.pt").unlink()
    with pytest.raises(zoo.ZooError, match="missing.*git checkout"):
        zoo.load("vit", "synthetic", checkpoint_dir=folder)
    with pytest.raises(zoo.ZooError, match="no checkpoint 'resnet-synthetic-sub10'.*--subset 0.1.*make zoo"):
        zoo.load("resnet", "synthetic", subset=0.1, checkpoint_dir=folder)


def test_wrong_architecture(folder):
    path = folder / "vit-synthetic.pt"
    with pytest.raises(zoo.ZooError, match="holds a 'vit' model, not 'resnet'"):
        zoo.load_checkpoint(path, expect_model="resnet")
    record = torch.load(path, weights_only=True)
    record["model"] = "resnet"  # a record that lies about its architecture
    torch.save(record, path)
    with pytest.raises(zoo.ZooError, match="do not fit the 'resnet' architecture"):
        zoo.load_checkpoint(path)


def test_bad_names(folder):
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        zoo.load("vgg", checkpoint_dir=folder)
    with pytest.raises(ValueError, match="unknown stage 'best'.*final, warmup"):
        zoo.load("vit", "synthetic", stage="best", checkpoint_dir=folder)


def test_bad_manifest(folder):
    (folder / zoo.MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(zoo.ZooError, match="not valid JSON"):
        zoo.load("vit", "synthetic", checkpoint_dir=folder)


def test_register_checks_location_and_name(folder, tmp_path):
    elsewhere = tmp_path / "vit-synthetic.pt"
    shutil.copy(folder / "vit-synthetic.pt", elsewhere)
    with pytest.raises(zoo.ZooError, match="not in"):
        zoo.register(elsewhere, checkpoint_dir=folder)
    renamed = folder / "my-vit.pt"
    shutil.copy(folder / "vit-synthetic.pt", renamed)
    with pytest.raises(zoo.ZooError, match="should be named vit-synthetic.pt"):
        zoo.register(renamed, checkpoint_dir=folder)


def test_entry_keys():
    assert zoo.Entry("vit").key == "vit-fashion-mnist"
    assert zoo.Entry("vit", subset=0.1, seed=2).key == "vit-fashion-mnist-sub10-seed2"
    assert "--subset 0.1 --seed 2" in zoo.Entry("vit", subset=0.1, seed=2).train_command()
    assert {e.model for e in zoo.ZOO} == set(models.MODELS)
    assert {e.model for e in zoo.ZOO if e.subset == 0.1} == {"resnet", "vit", "alternet"}
    assert zoo.Entry("vit", subset=0.104).key == "vit-fashion-mnist-sub10.4"  # never filed under 10%
    assert zoo.Entry("vit", subset=0.25).key == "vit-fashion-mnist-sub25"


def test_the_main_set():
    """The chapters' main models: every architecture on all the data, then the headline three on 10% × 3 seeds."""
    assert list(catalog.MAIN[:len(models.MODELS)]) == [zoo.Entry(m) for m in models.MODELS]
    rest = catalog.MAIN[len(models.MODELS):]
    assert {(e.model, e.seed) for e in rest} == {(m, s) for m in zoo.HEADLINE_MODELS for s in zoo.HEADLINE_SEEDS}
    assert all(e.subset == 0.1 and e.layout is None for e in rest) and [e.seed for e in rest] == sorted(e.seed for e in rest)
    assert zoo.SETS["main"] == catalog.MAIN


def test_load_checks_the_identity_of_the_file(folder):
    """A file registered under another entry's key is refused on load, not silently returned."""
    other = folder / "vit-synthetic-sub10.4.pt"
    train.train("vit", "synthetic", 0.104, recipe=replace(RECIPE, batch_size=64), out=other, progress=False)
    zoo.register(other, checkpoint_dir=folder)
    manifest = json.loads((folder / zoo.MANIFEST_NAME).read_text())
    manifest["checkpoints"]["vit-synthetic-sub10"] = manifest["checkpoints"].pop("vit-synthetic-sub10.4")
    (folder / zoo.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(zoo.ZooError, match=r"holds vit-synthetic-sub10.4 .*not the vit-synthetic-sub10 asked for"):
        zoo.load("vit", "synthetic", subset=0.1, checkpoint_dir=folder)
    assert zoo.load("vit", "synthetic", checkpoint_dir=folder)[1]["subset"] is None


def test_swap_moves_a_complete_staged_set_only(folder, tmp_path):
    staging, state = folder / "next", tmp_path / "state"
    entries = [zoo.catalogued(zoo.Entry("vit", "synthetic")), zoo.catalogued(zoo.Entry("vit", "synthetic", 0.1))]
    final = replace(RECIPE, batch_size=64)  # the 10% subset of the synthetic set has about 100 images

    def staged(entry, status):  # trained in the state folder, staged as the runner does
        train.train("vit", "synthetic", entry.subset, recipe=final, out=state / entry.filename, progress=False,
                    status=status)
        runner.stage(entry, final, state, staging)

    staged(entries[0], "final")
    old = zoo.read_manifest(folder)["checkpoints"]["vit-synthetic"]
    with pytest.raises(zoo.ZooError, match="not complete .not staged yet: vit-synthetic-sub10."):
        catalog.swap(entries, staging, folder)
    assert zoo.read_manifest(folder)["checkpoints"]["vit-synthetic"] == old  # nothing moved
    staged(entries[1], "provisional")
    with pytest.raises(zoo.ZooError, match="not final: vit-synthetic-sub10"):
        catalog.swap(entries, staging, folder)
    staged(entries[1], "final")
    moved = catalog.swap(entries, staging, folder)
    assert [m["file"] for m in moved] == [e.filename for e in entries] and {m["status"] for m in moved} == {"final"}
    listed = zoo.read_manifest(folder)["checkpoints"]
    assert listed["vit-synthetic"]["sha256"] != old["sha256"] and listed["vit-synthetic"]["status"] == "final"
    assert not staging.exists()  # the staging area goes once empty
    ok, problems = zoo.check(folder)
    assert set(ok) == {"vit-synthetic", "vit-synthetic-sub10"} and not problems
    assert zoo.load("vit", "synthetic", 0.1, checkpoint_dir=folder)[1]["status"] == "final"


def test_cli_train_keeps_the_state_folder_out_of_the_work_tree(monkeypatch, capsys):
    monkeypatch.setattr(zoo.runner, "run", lambda *a, **kw: pytest.fail("started training"))
    with pytest.raises(SystemExit):
        zoo.main(["train", "--state-dir", str(zoo.REPO / "data" / "state")])
    assert "must lie outside the work tree" in capsys.readouterr().err


def test_shipped_manifest_is_consistent():
    """Every checkpoint in the repository's manifest is present and matches its checksum."""
    listed = zoo.read_manifest()["checkpoints"]
    if not listed:
        pytest.skip("no shipped checkpoints yet")
    for key, entry in listed.items():
        path = zoo.CHECKPOINT_DIR / entry["file"]
        assert path.exists(), key
        assert zoo.sha256(path) == entry["sha256"], key
    assert {e.key for e in zoo.ZOO} <= set(listed)


def test_cli_list_and_verify(capsys):
    listed = zoo.read_manifest()["checkpoints"]
    if not listed:
        pytest.skip("no shipped checkpoints yet")
    assert zoo.main(["verify"]) == 0
    assert capsys.readouterr().out.count("ok ") == len(listed)
    assert zoo.main(["list", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert all(f"`{key}`" in table for key in listed)


def test_layout_variant_round_trip_without_snapshots(tmp_path):
    """A placement ablation is its own zoo entry: its layout is in the key, the record and the model."""
    entry = zoo.Entry("alternet", "synthetic", layout="cc,mc,mc", snapshots=False)
    assert entry.key == "alternet-CC.MC.MC-synthetic" and entry.layout == "CC,MC,MC"
    assert "--layout CC,MC,MC --no-snapshots" in entry.train_command()
    out = tmp_path / entry.filename
    train.train("alternet", "synthetic", recipe=RECIPE, out=out, progress=False, layout="CC,MC,MC",
                keep_snapshots=False)
    listed = zoo.register(out, checkpoint_dir=tmp_path)
    assert listed["layout"] == "CC,MC,MC" and listed["stages"] == ["final"]
    model, record = zoo.load("alternet", "synthetic", layout="CC,MC,MC", checkpoint_dir=tmp_path)
    assert model.net.layout == "CC,MC,MC" and record["build"]["layout"] == "CC,MC,MC"
    with pytest.raises(zoo.ZooError, match="has no 'warmup' snapshot"):
        zoo.load("alternet", "synthetic", layout="CC,MC,MC", stage="warmup", checkpoint_dir=tmp_path)
    with pytest.raises(zoo.ZooError, match="no checkpoint 'alternet-synthetic'.*--model alternet"):
        zoo.load("alternet", "synthetic", checkpoint_dir=tmp_path)  # the default layout is another entry


def test_ablation_zoo_entries():
    assert zoo.Entry("alternet", layout="CC,CM,CM") == zoo.Entry("alternet")  # its own layout is no variant
    assert zoo.Entry("alternet", layout="CC,CC,CM").key == "alternet-CC.CC.CM-fashion-mnist"
    for subset in (0.1, None):  # three seeds of the headline models on 10% and on all the data
        headline = {(e.model, e.seed) for e in zoo.ZOO + zoo.SEEDS if e.subset == subset and e.layout is None
                    and e.model in zoo.HEADLINE_MODELS}
        assert headline == {(m, s) for m in ("resnet", "vit", "alternet") for s in zoo.HEADLINE_SEEDS}
    layouts = {e.layout for e in zoo.ABLATIONS if e.layout and e.subset == 0.1}
    assert layouts == set(zoo.ABLATION_LAYOUTS.values())
    assert not any(e.snapshots for e in zoo.ABLATIONS + zoo.SEEDS)
    assert all(e.snapshots for e in zoo.ZOO)  # the chapters load every seed-0 model at the end of warm-up
    assert len({e.key for e in zoo.SETS["all"]}) == len(zoo.SETS["all"])  # no two entries share a file
    loaded_key = zoo.Entry("alternet", subset=0.1, seed=2)
    assert "--no-snapshots" in zoo.catalogued(loaded_key).train_command()


def test_priority_order():
    """A run cut short delivers the seed-0 models the chapters load first, then seeds, then ablations."""
    order = list(zoo.PRIORITY)
    assert order == list(zoo.ZOO) + list(zoo.SEEDS) + list(zoo.ABLATIONS)
    assert [e.seed for e in order[:len(zoo.ZOO)]] == [0] * len(zoo.ZOO)
    assert {e.seed for e in zoo.SEEDS} == {1, 2} and all(e.layout is None for e in zoo.SEEDS)
    assert all(e.layout is not None for e in zoo.ABLATIONS)
    assert zoo.SETS["all"] == zoo.PRIORITY


def test_cli_train_selects_entries_and_schedules(monkeypatch):
    calls = []
    monkeypatch.setattr(zoo.runner, "run", lambda work, folder, state, **kw: calls.append((work, kw)) or 0)
    assert zoo.main(["train", "--set", "ablation", "--data", "full", "--short"]) == 0
    work, kw = calls.pop()
    assert [e.layout for e, _ in work] == [zoo.ABLATION_LAYOUTS[n] for n in zoo.FULL_DATA_ABLATIONS]
    assert all(r.epochs == 2 and r.warmup_epochs == 1 for _, r in work) and kw["jobs"] == 1
    assert zoo.main(["train", "--set", "seeds", "--data", "sub10", "--only", "vit", "--short", "--jobs", "3"]) == 0
    work, kw = calls.pop()
    assert [(e.seed, r.epochs) for e, r in work] == [(1, 10), (2, 10)] and kw["jobs"] == 3
    assert zoo.main(["train"]) == 0  # the main set, the zoo's recipe for each subset, in priority order
    work, _ = calls.pop()
    assert [e for e, _ in work] == list(catalog.MAIN) and all(r == recipe.zoo_recipe(e.subset) for e, r in work)
    assert {r.epochs for e, r in work if e.subset is None} == {train.FULL_RECIPE.epochs}
    assert zoo.main(["train", "--set", "all", "--lr", "0.002"]) == 0  # a recipe flag applies to every entry
    work, _ = calls.pop()
    assert [e for e, _ in work] == list(zoo.PRIORITY) and {r.lr for _, r in work} == {0.002}
    assert all(r == replace(recipe.zoo_recipe(e.subset), lr=0.002) for e, r in work)
    assert zoo.main(["train", "--only", "vit", "--epochs", "6", "--dataset", "synthetic"]) == 0
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
    monkeypatch.setattr(zoo.runner, "run", lambda *a, **kw: pytest.fail("started training"))
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["train", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


@pytest.mark.parametrize("text,match", [
    ("{}", r'should hold \{"checkpoints"'), ("[]", r'should hold \{"checkpoints"'),
    ('{"checkpoints": {"vit-synthetic": 3}}', "is not an object"),
])
def test_malformed_manifest_says_what_and_how(folder, text, match):
    (folder / zoo.MANIFEST_NAME).write_text(text)
    with pytest.raises(zoo.ZooError, match=match + ".*git checkout -- "):
        zoo.load("vit", "synthetic", checkpoint_dir=folder)


def test_manifest_entry_missing_a_field(folder):
    path = folder / zoo.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    del manifest["checkpoints"]["vit-synthetic"]["sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(zoo.ZooError, match="'vit-synthetic' lacks sha256; re-register it with `python -m lib.zoo "
                                           "register .*vit-synthetic.pt`"):
        zoo.read_manifest(folder)


def test_restore_hints_work_from_the_repository_root():
    """The hint names the manifest by its path from the root, which is where `git checkout` runs."""
    hint = catalog._restore_hint(zoo.CHECKPOINT_DIR / zoo.MANIFEST_NAME)
    assert "`git checkout -- data/checkpoints/MANIFEST.json`" in hint
    assert subprocess.run(["git", "ls-files", "--error-unmatch", "data/checkpoints/MANIFEST.json"],
                          cwd=zoo.REPO, capture_output=True).returncode == 0


def test_verify_says_what_is_wrong_and_how_to_fix_it(folder, capsys):
    args = ["verify", "--checkpoint-dir", str(folder)]
    assert zoo.main(args) == 0 and "ok  vit-synthetic" in capsys.readouterr().out
    path = folder / "vit-synthetic.pt"
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    shutil.copy(path, folder / "stray.pt")
    assert zoo.main(args) == 1
    out = capsys.readouterr().out
    assert "BAD vit-synthetic: checksum mismatch" in out and "fix: restore it with `git checkout -- " in out
    assert "BAD stray: stray.pt is in the folder but not in the manifest" in out
    path.unlink()
    assert zoo.main(args) == 1 and "BAD vit-synthetic: file" in capsys.readouterr().out
    (folder / zoo.MANIFEST_NAME).unlink()  # a deleted manifest is an error, not an empty zoo
    assert zoo.main(args) == 1
    assert "there is no manifest at" in capsys.readouterr().err


def test_register_refuses_an_entry_without_the_snapshot_the_chapters_load(tmp_path):
    out = tmp_path / "vit-synthetic.pt"
    train.train("vit", "synthetic", recipe=RECIPE, out=out, progress=False, keep_snapshots=False)
    with pytest.raises(zoo.ZooError, match="no warm-up snapshot, which the chapters load"):
        zoo.register(out, checkpoint_dir=tmp_path)


def test_the_whole_catalogue_fits_the_size_budget():
    """Float16 weights take 2 bytes a parameter, twice with a warm-up snapshot: the fully trained zoo
    (every entry of the catalogue) must stay under the 96 MB the repository allows for checkpoints."""
    params = {}
    total = 0
    for e in zoo.PRIORITY:
        if (e.model, e.layout) not in params:
            params[e.model, e.layout] = models.count_parameters(
                models.build(e.model, **({"layout": e.layout} if e.layout else {})))
        total += 2 * params[e.model, e.layout] * (2 if e.snapshots else 1) + 50_000  # + record and pickle overhead
    shipped = {item["file"]: item["bytes"] for item in zoo.read_manifest()["checkpoints"].values()}
    vit = zoo.Entry("vit")  # the estimate agrees with a shipped file to 2%
    assert shipped[vit.filename] == pytest.approx(4 * params["vit", None] + 50_000, rel=0.02)
    assert total < 96e6, f"the catalogue needs about {total / 1e6:.0f} MB"


def test_entry_for_a_model_or_a_layout(folder):
    assert zoo.entry_for("vit", 0.1, seed=2) == zoo.Entry("vit", subset=0.1, seed=2)
    assert not zoo.entry_for("vit", 0.1, seed=2).snapshots  # the catalogue's own entry
    assert zoo.entry_for("CC,CC,CC") == zoo.Entry("resnet")
    assert zoo.entry_for("cc,cm,cm") == zoo.Entry("alternet")
    assert zoo.entry_for("CC,MC,MC", 0.1).key == "alternet-CC.MC.MC-fashion-mnist-sub10"
    with pytest.raises(ValueError, match="bad layout 'vgg'"):
        zoo.entry_for("vgg")
    trained, untrained = zoo.entry_for("vit", dataset="synthetic"), zoo.entry_for("resnet", dataset="synthetic")
    assert zoo.is_trained(trained, folder) and not zoo.is_trained(untrained, folder)
    assert zoo.record(untrained, folder) is None
    rec = zoo.record(trained, folder)
    assert rec["manifest"]["file"] == "vit-synthetic.pt" and "weights" not in rec


def test_cli_register_goes_to_the_zoo_folder_unless_told(folder, tmp_path, capsys):
    path = folder / "vit-synthetic.pt"
    assert zoo.main(["register", str(path)]) == 1  # not in data/checkpoints: refused, nothing written
    assert "is not in data/checkpoints" in capsys.readouterr().err
    (folder / zoo.MANIFEST_NAME).unlink()
    assert zoo.main(["register", str(path), "--checkpoint-dir", str(folder)]) == 0
    assert "registered vit-synthetic.pt" in capsys.readouterr().out
    assert set(zoo.read_manifest(folder)["checkpoints"]) == {"vit-synthetic"}
