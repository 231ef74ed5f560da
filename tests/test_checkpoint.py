"""pfc_mx.checkpoint in one process: atomic save, keep N, checksums, fallback, centers by class range."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from pfc_mx import checkpoint
from pfc_mx.errors import CheckpointError


def tiny():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(3))
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((1, 4)))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9}, kvstore=None)
    return net, trainer


def export(net, prefix):
    net.export(prefix)


def save(root, step, centers, keep=2):
    net, trainer = tiny()
    return checkpoint.save(root, step, {"step": step, "num_classes": len(centers[1])}, net, trainer,
                           centers, keep, export)


def centers(n=10, d=4, seed=0):
    rng = np.random.RandomState(seed)
    return 0, rng.randn(n, d).astype(np.float32), rng.randn(n, d).astype(np.float32)


def test_save_writes_complete_folder_updates_latest_and_keeps_newest(tmp_path):
    for step in (2, 4, 6):
        folder = save(tmp_path, step, centers(seed=step))
    assert folder.name == "step-00000006"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000004", "step-00000006"]
    assert (tmp_path / "latest").read_text().strip() == "step-00000006"
    state = checkpoint.check_integrity(folder)
    assert state["step"] == 6
    assert {"backbone-symbol.json", "backbone-0000.params", "backbone-trainer.states",
            "centers-000000000-000000010.weight.npy"} <= set(state["files"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_resolve_finds_the_step_folder_from_a_run_checkpoints_or_step_folder_or_latest(tmp_path):
    root = tmp_path / "run" / checkpoint.CHECKPOINTS
    older = save(root, 2, centers())
    newest = save(root, 4, centers())
    assert {checkpoint.BACKBONE_SYMBOL, checkpoint.BACKBONE_PARAMS, checkpoint.TRAINER_STATES,
            checkpoint.STATE} <= {p.name for p in newest.iterdir()}
    for path in (tmp_path / "run", root, root / checkpoint.LATEST, newest, str(tmp_path / "run")):
        assert checkpoint.resolve(path) == newest, path
    assert checkpoint.resolve(older) == older


def test_resolve_says_in_one_line_why_a_path_is_no_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no backbone-symbol.json, latest or checkpoints/latest"):
        checkpoint.resolve(tmp_path)
    (tmp_path / "latest").write_text("\n")
    with pytest.raises(CheckpointError, match="empty checkpoint pointer"):
        checkpoint.resolve(tmp_path)
    (tmp_path / "latest").write_text("step-00000009\n")
    with pytest.raises(CheckpointError, match="step-00000009, which has no backbone-symbol.json"):
        checkpoint.resolve(tmp_path / "latest")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(CheckpointError, match="notes.txt: not a checkpoint"):
        checkpoint.resolve(tmp_path / "notes.txt")


def test_centers_reassemble_for_any_shard(tmp_path):
    _, w, m = centers(n=10)
    net, trainer = tiny()
    # two "ranks" wrote [0, 6) and [6, 10): emulate by saving twice into one folder
    folder = save(tmp_path, 2, (0, w[:6], m[:6]))
    np.save(folder / "centers-000000006-000000010.weight.npy", w[6:])
    np.save(folder / "centers-000000006-000000010.momentum.npy", m[6:])
    for start, n in ((0, 10), (3, 4), (5, 5), (0, 4)):
        gw, gm = checkpoint.load_centers(folder, start, n, 4)
        np.testing.assert_array_equal(gw, w[start:start + n])
        np.testing.assert_array_equal(gm, m[start:start + n])
    with pytest.raises(CheckpointError, match=r"class range \[8, 12\) is not fully stored"):
        checkpoint.load_centers(folder, 8, 4, 4)
    with pytest.raises(CheckpointError, match="dimension 4, the model has 8"):
        checkpoint.load_centers(folder, 0, 4, 8)


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    save(tmp_path, 2, centers(seed=1))
    newest = save(tmp_path, 4, centers(seed=2))
    params = newest / "backbone-0000.params"
    params.write_bytes(params.read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match="checksum mismatch in backbone-0000.params"):
        checkpoint.check_integrity(newest)
    found = checkpoint.find_resumable(tmp_path)
    assert found.path.name == "step-00000002"
    assert "skipping checkpoint" in caplog.text and "step-00000004" in caplog.text


def test_folder_without_state_json_is_never_resumed(tmp_path):
    save(tmp_path, 2, centers())
    interrupted = tmp_path / "step-00000004"
    interrupted.mkdir()
    (interrupted / "backbone-0000.params").write_bytes(b"partial")
    assert checkpoint.find_resumable(tmp_path).path.name == "step-00000002"
    assert checkpoint.find_resumable(tmp_path / "nothing-here") is None


def test_unwritable_root_raises_and_leaves_previous_intact(tmp_path):
    save(tmp_path, 2, centers())
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CheckpointError, match="cannot create"):
        save(blocker, 4, centers())
    assert (tmp_path / "latest").read_text().strip() == "step-00000002"
    assert json.loads((tmp_path / "step-00000002" / "state.json").read_text())["step"] == 2


def test_bit_flip_of_same_size_is_skipped_and_named_in_the_fallback(tmp_path):
    save(tmp_path, 2, centers(seed=1), keep=3)
    save(tmp_path, 4, centers(seed=2), keep=3)
    newest = save(tmp_path, 6, centers(seed=3), keep=3)
    weight = newest / "centers-000000000-000000010.weight.npy"
    data = bytearray(weight.read_bytes())
    data[-5] ^= 0x01  # one bit of one float: same size, same shape
    weight.write_bytes(bytes(data))
    (tmp_path / "step-00000004" / "state.json").write_text("{not json")
    found = checkpoint.find_resumable(tmp_path)
    assert found.path.name == "step-00000002" and found.state["step"] == 2
    assert [(p.name, why.split(": ", 1)[1]) for p, why in found.skipped] == [
        ("step-00000006", "checksum mismatch in centers-000000000-000000010.weight.npy (file damaged)"),
        ("step-00000004", found.skipped[1][1].split(": ", 1)[1])]
    assert "unreadable" in found.skipped[1][1]
    checkpoint.point_latest(tmp_path, found.path)
    assert (tmp_path / "latest").read_text().strip() == "step-00000002"


def test_interrupted_save_folders_are_removed_and_never_resumed(tmp_path):
    save(tmp_path, 2, centers())
    tmp = tmp_path / ".step-00000004.tmp"
    tmp.mkdir()
    (tmp / "backbone-0000.params").write_bytes(b"half of a file")
    (tmp_path / "latest.tmp").write_text("step-000")
    assert checkpoint.find_resumable(tmp_path).path.name == "step-00000002"
    assert checkpoint.remove_incomplete(tmp_path) == [".step-00000004.tmp", "latest.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000002"]
    assert checkpoint.remove_incomplete(tmp_path / "nothing-here") == []


def test_pruning_never_removes_the_new_checkpoint_for_a_newer_folder(tmp_path):
    # a damaged (or later-history) step-6 stays on disk; a run resumed at step 4 saves step 5 with keep 1
    save(tmp_path, 4, centers(seed=1), keep=1)
    stray = tmp_path / "step-00000006"
    stray.mkdir()
    (stray / "state.json").write_text("{not json")
    newest = save(tmp_path, 5, centers(seed=2), keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005", "step-00000006"]
    assert checkpoint.check_integrity(newest)["step"] == 5 and (tmp_path / "latest").read_text().strip() == "step-00000005"


def test_set_aside_newer_moves_folders_past_the_resume_step_and_keeps_them(tmp_path):
    for step in (2, 4, 6):
        save(tmp_path, step, centers(seed=step), keep=3)
    (tmp_path / "set-aside").mkdir()
    (tmp_path / "set-aside" / "step-00000006").mkdir()  # from an earlier set-aside: names stay unique
    assert checkpoint.set_aside_newer(tmp_path, 2) == ["step-00000004", "step-00000006"]
    assert [s for s, _ in checkpoint.step_folders(tmp_path)] == [2]
    assert sorted(p.name for p in (tmp_path / "set-aside").iterdir()) == [
        "step-00000004", "step-00000006", "step-00000006.1"]
    assert checkpoint.check_integrity(tmp_path / "set-aside" / "step-00000006.1")["step"] == 6
    assert checkpoint.find_resumable(tmp_path).path.name == "step-00000002"
    assert checkpoint.set_aside_newer(tmp_path, 2) == []
    checkpoint.point_latest(tmp_path, None)
    assert not (tmp_path / "latest").exists()


def test_a_file_that_cannot_be_read_is_a_checkpoint_error(tmp_path, monkeypatch):
    folder = save(tmp_path, 2, centers())

    def unreadable(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint.loading, "file_sha256", unreadable)
    with pytest.raises(CheckpointError, match=r"unreadable \(Input/output error\)"):
        checkpoint.check_integrity(folder)
    assert checkpoint.find_resumable(tmp_path) is None
