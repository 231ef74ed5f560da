"""tools/rec.py: build → read round trips, unpack, shuffle, validate, and one-line errors with exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfc_mx.cli import run_cli
from pfc_mx.cli.rec import main
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.writer import InsightfaceWriter
from tests.ranks import rank_env

ROOT = Path(__file__).resolve().parents[1]


def rec(*argv) -> int:
    return run_cli(main, [str(a) for a in argv])


def image(seed: int, size: int = 112) -> np.ndarray:
    """A smooth random BGR image (so that JPEG re-encoding stays close to it)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """3 identities (sub-folder names sort to class ids), PNGs, one 64×64 image, one non-image file."""
    src = tmp_path / "faces"
    truth = []
    for c, name in enumerate(["alice", "bob", "carol"]):
        (src / name).mkdir(parents=True)
        for j in range(c + 2):
            img = image(10 * c + j, 64 if (c, j) == (1, 0) else 112)
            cv2.imwrite(str(src / name / f"{j:02d}.png"), img)
            truth.append((img, c))
    (src / "bob" / "notes.txt").write_text("not an image")
    return src, truth


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_build_from_folder_round_trips_pixels_and_labels(folder, tmp_path, capsys):
    src, truth = folder
    assert rec("build", src, tmp_path / "out", "--workers", "2") == 0
    ds = RecordDataset(tmp_path / "out")
    assert (ds.layout, ds.num_images, ds.num_classes) == ("insightface", len(truth), 3)
    assert ds.identity_ranges().tolist() == [[1, 3], [3, 6], [6, 10]]
    for i, (img, label) in enumerate(truth):
        data, got = ds.read(i)
        assert got == label
        if img.shape[0] == 112:  # kept as the source's own lossless bytes
            np.testing.assert_array_equal(decoded(data), img)
        else:  # resized and re-encoded
            ref = cv2.resize(img, (112, 112), interpolation=cv2.INTER_LINEAR)
            assert decoded(data).shape == (112, 112, 3)
            assert np.abs(decoded(data).astype(int) - ref).mean() < 3
    assert "9 images, 3 classes, 0 skipped" in capsys.readouterr().out


def test_build_from_im2rec_list_sorts_by_label_and_skips_unreadable(folder, tmp_path, capsys):
    src, truth = folder
    files = sorted(src.rglob("*.png"))
    lines = [f"{n}\t{2 - ['alice', 'bob', 'carol'].index(f.parent.name)}\t{f.relative_to(src)}"
             for n, f in enumerate(files)]
    lines.append(f"{len(files)}\t1\tbob/notes.txt")
    (src / "all.lst").write_text("\n".join(lines) + "\n")
    assert rec("build", "--list", src / "all.lst", tmp_path / "out", "--workers", "1") == 0
    ds = RecordDataset(tmp_path / "out")
    assert ds.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 2  # carol became class 0
    np.testing.assert_array_equal(decoded(ds.read(0)[0]), cv2.imread(str(src / "carol" / "00.png")))
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out and "notes.txt" in captured.err


def test_unpack_then_build_restores_the_dataset(folder, tmp_path):
    src, truth = folder
    rec("build", src, tmp_path / "a")
    assert rec("unpack", tmp_path / "a", tmp_path / "unpacked") == 0
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir()) == ["00000", "00001", "00002"]
    rec("build", tmp_path / "unpacked", tmp_path / "b")
    a, b = RecordDataset(tmp_path / "a"), RecordDataset(tmp_path / "b")
    assert a.labels.tolist() == b.labels.tolist()
    assert [a.read(i) for i in range(a.num_images)] == [b.read(i) for i in range(b.num_images)]


@pytest.mark.parametrize("layout", ["flat", "insightface"])
def test_shuffle_keeps_every_image_with_its_label_in_a_new_order(folder, tmp_path, layout):
    src, _ = folder
    rec("build", src, tmp_path / "a")
    assert rec("shuffle", tmp_path / "a", tmp_path / "s", "--layout", layout, "--seed", "1") == 0
    a, s = RecordDataset(tmp_path / "a"), RecordDataset(tmp_path / "s")
    assert s.layout == layout and s.num_classes == 3
    before = sorted((a.read(i)[0], a.read(i)[1]) for i in range(a.num_images))
    after = [s.read(i) for i in range(s.num_images)]
    assert sorted(after) == before
    assert [d for d, _ in after] != [a.read(i)[0] for i in range(a.num_images)]
    if layout == "insightface":  # identity records rebuilt: class c's range holds exactly its images
        for c, (lo, hi) in enumerate(s.identity_ranges()):
            assert set(s.labels[lo - 1:hi - 1].tolist()) == {c}


def test_inspect_prints_counts_and_sizes(folder, tmp_path, capsys):
    src, _ = folder
    rec("build", src, tmp_path / "a")
    capsys.readouterr()
    assert rec("inspect", tmp_path / "a") == 0
    out = capsys.readouterr().out
    assert "images    9" in out and "classes   3" in out and "112x112x3: 9" in out
    assert "min 2  median 3  mean 3.0  max 4" in out


def test_validate_reports_damaged_and_out_of_range_records_with_exit_1(tmp_path, capsys):
    good = cv2.imencode(".jpg", image(0))[1].tobytes()
    with InsightfaceWriter(tmp_path, 3) as w:
        for i, label in enumerate([0, 0, 1, 2, 2]):
            w.add(good[:150] if i == 2 else good, label)
    assert rec("validate", tmp_path) == 1
    out = capsys.readouterr().out
    assert "damaged: record 3 (image 2): truncated" in out and "1 damaged" in out and "FAILED" in out
    (tmp_path / "property").write_text("2,112,112")
    assert rec("validate", tmp_path, "--workers", "1") == 1
    out = capsys.readouterr().out
    assert "out-of-range label: record 4 (image 3)" in out and "2 out-of-range label" in out


def test_validate_passes_a_clean_dataset(folder, tmp_path, capsys):
    rec("build", folder[0], tmp_path / "a")
    assert rec("validate", tmp_path / "a") == 0
    assert ("0 damaged, 0 wrong size, 0 wrong channels, 0 out-of-range label, 0 identity mismatch, 0 empty classes: ok"
            in capsys.readouterr().out)


def broken_datasets(tmp_path: Path):
    """(name, dataset path) for each malformed case of issue item 7."""
    good = cv2.imencode(".jpg", image(0, 16))[1].tobytes()

    def write(name, labels, classes=None):
        d = tmp_path / name
        with InsightfaceWriter(d, classes or max(labels) + 1) as w:
            for label in labels:
                w.add(good, label)
        return d

    truncated = write("truncated", [0, 1, 2])
    data = (truncated / "train.rec").read_bytes()
    (truncated / "train.rec").write_bytes(data[:len(data) // 2])
    missing = write("missing_idx", [0, 1])
    (missing / "train.idx").unlink()
    big = write("label_too_big", [0, 1, 2])
    (big / "property").write_text("2,112,112")
    empty = write("empty", [], classes=2)
    return [("truncated", truncated), ("missing", missing), ("label", big), ("empty", empty)]


def test_every_malformed_dataset_gives_one_error_line_and_exit_2(tmp_path, capsys):
    for name, path in broken_datasets(tmp_path):
        # validate and unpack list out-of-range labels instead (exit 1, tested above)
        commands = ("inspect", "shuffle") if name == "label" else ("inspect", "validate", "unpack", "shuffle")
        for command in commands:
            argv = [command, path] + ([tmp_path / "u"] if command in ("unpack", "shuffle") else [])
            assert rec(*argv) == 2, (name, command)
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, err
            assert "train" in err


def test_cli_exit_code_and_single_line_from_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "rec.py"), "inspect", str(tmp_path / "nowhere")],
                       env=rank_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: ") and "nowhere" in r.stderr


def test_build_refuses_to_overwrite_and_reports_a_missing_source(folder, tmp_path, capsys):
    rec("build", folder[0], tmp_path / "a")
    capsys.readouterr()
    assert rec("build", folder[0], tmp_path / "a") == 2
    assert "exists" in capsys.readouterr().err
    assert rec("build", tmp_path / "none", tmp_path / "b") == 2
    assert "no such image folder" in capsys.readouterr().err
