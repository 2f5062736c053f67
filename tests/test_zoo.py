"""The zoo: checkpoint round trip, sha256 verification, and clear errors for every failure."""
import shutil

import pytest
import torch

from lib import models, train, zoo

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
    headline = {(e.model, e.seed) for e in zoo.ZOO + zoo.ABLATIONS if e.subset == 0.1 and e.layout is None}
    assert headline == {(m, s) for m in ("resnet", "vit", "alternet") for s in zoo.HEADLINE_SEEDS}
    layouts = {e.layout for e in zoo.ABLATIONS if e.layout and e.subset == 0.1}
    assert layouts == set(zoo.ABLATION_LAYOUTS.values())
    assert not any(e.snapshots for e in zoo.ABLATIONS)
    assert len({e.key for e in zoo.SETS["all"]}) == len(zoo.SETS["all"])  # no two entries share a file
    loaded_key = zoo.Entry("alternet", subset=0.1, seed=2)
    assert "--no-snapshots" in next(e for e in zoo.ABLATIONS if e == loaded_key).train_command()


def test_cli_train_selects_entries_and_schedules(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(zoo.subprocess, "run", lambda argv, **kw: ran.append(argv) or
                        type("Done", (), {"returncode": 0})())
    assert zoo.main(["train", "--set", "ablation", "--data", "full", "--short"]) == 0
    assert len(ran) == len(zoo.FULL_DATA_ABLATIONS)
    assert all("--layout" in argv and argv[argv.index("--epochs") + 1] == "2" for argv in ran)
    ran.clear()
    assert zoo.main(["train", "--set", "ablation", "--data", "sub10", "--only", "vit", "--short"]) == 0
    assert [argv[argv.index("--seed") + 1] for argv in ran] == ["1", "2"]
    assert all(argv[argv.index("--epochs") + 1] == "10" for argv in ran)
    with pytest.raises(SystemExit, match="--short sets the epochs"):
        zoo.main(["train", "--short", "--epochs", "3"])
    with pytest.raises(SystemExit, match="nothing to train"):
        zoo.main(["train", "--set", "ablation", "--only", "pit"])
