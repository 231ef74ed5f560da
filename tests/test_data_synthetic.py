"""Synthetic face-identity dataset and `.bin` verification sets."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.synthetic import class_counts, generate
from pfc_mx.data.verification_bin import load_bin, write_bin
from pfc_mx.errors import DatasetError
from pfc_mx.cli import run_cli
from pfc_mx.cli.rec import main as rec_main


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_generator_is_deterministic_and_independent_of_worker_count(tmp_path):
    kw = dict(num_identities=6, images_per_identity=3, holdout_identities=4, num_pairs=6, label_flip=0.2,
              duplicate_fraction=0.34, seed=5, progress=False)
    a = generate(tmp_path / "a", workers=1, **kw)
    b = generate(tmp_path / "b", workers=2, **kw)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert {k: v for k, v in a.items() if k not in ("seconds", "out_dir", "rec", "bin")} == \
           {k: v for k, v in b.items() if k not in ("seconds", "out_dir", "rec", "bin")}
    c = generate(tmp_path / "c", workers=1, **{**kw, "seed": 6})
    assert digest(tmp_path / "c")["train.rec"] != digest(tmp_path / "a")["train.rec"]
    assert c["num_images"] == 18


def test_generated_dataset_reads_with_noise_as_requested(tmp_path):
    s = generate(tmp_path, num_identities=10, images_per_identity=4, holdout_identities=3, num_pairs=8,
                 label_flip=0.25, duplicate_fraction=0.2, seed=1, workers=1, progress=False)
    ds = RecordDataset(tmp_path)
    assert (ds.layout, ds.num_classes, ds.num_images) == ("insightface", 10, 40)
    assert (s["flipped_labels"], s["duplicated_classes"], s["distinct_identities"]) == (10, 2, 8)
    assert ds.identity_ranges().tolist() == [[1 + 4 * c, 5 + 4 * c] for c in range(10)]
    assert ds.labels.tolist() == np.repeat(np.arange(10), 4).tolist()  # headers agree with identity records
    generate(tmp_path / "clean", num_identities=10, images_per_identity=4, holdout_identities=3, num_pairs=8,
             duplicate_fraction=0.2, seed=1, workers=1, progress=False)
    clean = RecordDataset(tmp_path / "clean")
    changed = [i for i in range(40) if ds.read(i)[0] != clean.read(i)[0]]
    assert len(changed) == 10  # exactly the flipped ones show another identity's face
    images, issame = load_bin(tmp_path / "synthetic_val.bin")
    assert images.shape == (16, 3, 112, 112) and images.dtype == np.uint8
    assert issame.dtype == np.bool_ and issame.sum() == 4  # half same, half different
    img, _ = ds.read(0)
    assert img[:2] == b"\xff\xd8"  # JPEG


def test_same_identity_photos_are_closer_than_different_identities(tmp_path):
    """A sanity check on the drawing: raw pixels already separate same from different pairs on average."""
    generate(tmp_path, num_identities=2, images_per_identity=2, holdout_identities=6, num_pairs=40, seed=2,
             workers=1, progress=False)
    images, issame = load_bin(tmp_path / "synthetic_val.bin")
    x = images.reshape(len(images), -1).astype(np.float32)
    d = np.abs(x[0::2] - x[1::2]).mean(1)
    assert d[issame].mean() < d[~issame].mean()


def test_long_tail_counts_keep_the_mean_and_a_minimum_of_two():
    counts = class_counts(2000, 20, long_tail=True, seed=0)
    assert counts.min() >= 2 and counts.max() > 5 * 20
    assert abs(counts.mean() - 20) < 3
    assert (class_counts(5, 7, long_tail=False, seed=0) == 7).all()


def test_synth_subcommand_writes_the_dataset(tmp_path, capsys):
    assert run_cli(rec_main, ["synth", str(tmp_path), "--identities", "3", "--images-per-identity", "2",
                              "--holdout", "2", "--pairs", "4", "--workers", "1", "--bin-name", "val"]) == 0
    assert '"num_images": 6' in capsys.readouterr().out
    assert RecordDataset(tmp_path).num_classes == 3 and (tmp_path / "val.bin").is_file()


# ------------------------------------------------------------------ .bin files
def test_bin_round_trip_is_exact_with_png_and_resizes_on_request(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 112, 112), dtype=np.uint8)
    issame = [True, False, True]
    write_bin(tmp_path / "x.bin", images, issame, ext=".png")
    got, same = load_bin(tmp_path / "x.bin")
    np.testing.assert_array_equal(got, images)
    assert same.tolist() == issame
    small, _ = load_bin(tmp_path / "x.bin", image_size=(56, 48))
    assert small.shape == (6, 3, 56, 48)


def test_bin_written_like_insightface_loads(tmp_path):
    """Bytes items and a numpy issame array, as insightface's own .bin files hold them."""
    jpeg = write_bin(tmp_path / "ref.bin", np.full((2, 3, 112, 112), 128, np.uint8), [True])
    with open(jpeg, "rb") as f:
        bins, _ = pickle.load(f)
    with open(tmp_path / "legacy.bin", "wb") as f:
        pickle.dump(([bytearray(bins[0]), np.frombuffer(bins[1], np.uint8)], np.array([False])), f, protocol=2)
    images, issame = load_bin(tmp_path / "legacy.bin")
    assert images.shape == (2, 3, 112, 112) and abs(int(images.mean()) - 128) <= 2 and issame.tolist() == [False]


@pytest.mark.parametrize("case", ["missing", "not_pickle", "odd_count", "undecodable"])
def test_bad_bin_files_give_one_line_dataset_error(tmp_path, case):
    path = tmp_path / f"{case}.bin"
    if case == "not_pickle":
        path.write_bytes(b"garbage")
    elif case == "odd_count":
        path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    elif case == "undecodable":
        path.write_bytes(pickle.dumps(([b"a", b"b"], [True])))
    with pytest.raises(DatasetError) as e:
        load_bin(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
