"""Damaged, wrongly sized and grey face images: caught by the integrity check, the loader and validate.

The damage is done the way it happens to real files: `head -c` of a JPEG (a copy or download cut
short), `dd conv=notrunc` of random bytes over its second half (a bad disk block), a PNG cut short.
The references are independent decoders: Pillow's strict decode for truncation and libjpeg's own
message on stderr (from a separate process) for the garbage.
"""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from pfc_mx.data import faces
from pfc_mx.data.integrity import decode_checked, image_info
from pfc_mx.data.loader import RecordLoader
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.writer import FlatWriter, InsightfaceWriter
from pfc_mx.errors import DatasetError
from pfc_mx.cli import run_cli
from pfc_mx.cli.rec import main as rec_main


def face(seed: int, size=(112, 112)) -> np.ndarray:
    """A synthetic face, RGB (H, W, 3) uint8, resized to size (H, W)."""
    rng = np.random.default_rng(seed)
    img = faces.render(faces.identity(rng), rng)
    return img if img.shape[:2] == size else cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)


def pil_bytes(img: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def cv_jpeg(img: np.ndarray, *params: int) -> bytes:
    return cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92, *params])[1].tobytes()


def cut_with_head(data: bytes, keep: float, tmp: Path) -> bytes:
    src, out = tmp / "whole", tmp / "cut"
    src.write_bytes(data)
    with open(out, "wb") as f:
        subprocess.run(["head", "-c", str(int(len(data) * keep)), str(src)], stdout=f, check=True)
    return out.read_bytes()


def garbage_second_half(data: bytes, seed: int, tmp: Path) -> bytes:
    target, junk = tmp / f"g{seed}", tmp / f"junk{seed}"
    target.write_bytes(data)
    junk.write_bytes(np.random.default_rng(seed).integers(0, 256, len(data) - len(data) // 2, np.uint8).tobytes())
    subprocess.run(["dd", f"if={junk}", f"of={target}", "bs=1", f"seek={len(data) // 2}", "conv=notrunc",
                    "status=none"], check=True)
    return target.read_bytes()


def pillow_decodes_whole(data: bytes) -> bool:
    """Independent reference for truncation: Pillow refuses to load an image whose data ends early."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        Image.open(io.BytesIO(data)).load()
        return True
    except OSError:
        return False


def libjpeg_message(data: bytes, tmp: Path) -> str:
    """What libjpeg prints on stderr when OpenCV decodes data, in a separate process."""
    path = tmp / "probe.jpg"
    path.write_bytes(data)
    code = f"import cv2, numpy as np; cv2.imdecode(np.fromfile({str(path)!r}, np.uint8), cv2.IMREAD_COLOR)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr.strip()


SOUND = {
    "opencv baseline": lambda img: cv_jpeg(img),
    "opencv progressive": lambda img: cv_jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "opencv restart markers": lambda img: cv_jpeg(img, cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
    "pillow baseline 4:2:0": lambda img: pil_bytes(img, quality=85),
    "pillow progressive optimised": lambda img: pil_bytes(img, quality=90, progressive=True, optimize=True),
    "pillow png": lambda img: pil_bytes(img, "PNG"),
    "jpeg + NUL padding": lambda img: cv_jpeg(img) + b"\0" * 3,
}


@pytest.mark.parametrize("name", sorted(SOUND))
def test_sound_images_of_several_encoders_pass_and_decode_as_opencv_does(name, capfd):
    img = face(1)
    data = SOUND[name](img)
    got, fault, info = decode_checked(data)
    assert fault == "" and (info.height, info.width, info.channels) == (112, 112, 3)
    np.testing.assert_array_equal(got, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert capfd.readouterr().err == ""


def test_headers_give_size_and_channels_of_grey_and_alpha_images():
    grey = face(2)[:, :, 0]
    assert image_info(pil_bytes(grey)).shape == "112x112x1"
    assert image_info(cv2.imencode(".png", grey)[1].tobytes()).shape == "112x112x1"
    rgba = np.dstack([face(2), np.full((112, 112), 255, np.uint8)])
    assert image_info(pil_bytes(rgba, "PNG")).shape == "112x112x4"
    assert image_info(cv_jpeg(face(2, (150, 200)))).shape == "200x150x3"


def test_jpeg_cut_to_40_percent_is_damaged_although_opencv_decodes_it(tmp_path, capfd):
    data = cv_jpeg(face(3))
    cut = cut_with_head(data, 0.4, tmp_path)
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None  # the fault being caught
    assert not pillow_decodes_whole(cut) and pillow_decodes_whole(data)
    img, fault, _ = decode_checked(cut)
    assert img is None and fault.startswith("truncated")
    for keep in (0.05, 0.2, 0.6, 0.9, 0.99):  # wherever the copy stopped
        assert decode_checked(cut_with_head(data, keep, tmp_path))[1].startswith("truncated")
    capfd.readouterr()


def test_jpeg_with_garbage_second_half_is_damaged_as_libjpeg_says(tmp_path, capfd):
    data = cv_jpeg(face(4))
    for seed in range(12):
        broken = garbage_second_half(data, seed, tmp_path)
        assert decode_checked(broken)[0] is None, seed
    assert "Corrupt JPEG data" in libjpeg_message(garbage_second_half(data, 0, tmp_path), tmp_path)
    assert capfd.readouterr().err == ""  # nothing leaked to the terminal


def test_libjpeg_warnings_are_captured_as_the_reason(tmp_path, capfd):
    data = cv_jpeg(face(5))
    patched = data[:int(len(data) * 0.6)].rstrip(b"\xff") + b"\xff\xd9"  # a cut file 'repaired' with an EOI
    assert image_info(patched).fault == ""  # the structure looks whole ...
    reference = libjpeg_message(patched, tmp_path)
    assert "premature end of data segment" in reference
    img, fault, _ = decode_checked(patched)  # ... but libjpeg complains, and we keep what it said
    assert img is None and reference in fault
    assert capfd.readouterr().err == ""


def test_png_cut_short_is_damaged(tmp_path, capfd):
    data = pil_bytes(face(6), "PNG")
    for keep in (0.3, 0.6, 0.999):
        cut = cut_with_head(data, keep, tmp_path)
        assert not pillow_decodes_whole(cut)
        assert decode_checked(cut)[1].startswith("truncated")
    assert capfd.readouterr().err == ""


def damaged_set(tmp_path: Path) -> dict:
    """Encoded images: 'good' ones and the damaged kinds above."""
    data = cv_jpeg(face(7))
    return {"cut": cut_with_head(data, 0.4, tmp_path), "garbage": garbage_second_half(data, 1, tmp_path),
            "png cut": cut_with_head(pil_bytes(face(8), "PNG"), 0.6, tmp_path)}


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_skips_counts_and_names_damaged_records(tmp_path, workers, caplog):
    bad = damaged_set(tmp_path)
    with FlatWriter(tmp_path / "train.rec") as w:
        for i in range(24):
            w.add(list(bad.values())[i // 8] if i % 8 == 3 else cv_jpeg(face(i)), i % 4)
    ds = RecordDataset(tmp_path / "train.rec")
    with caplog.at_level(logging.WARNING), RecordLoader(ds, 8, num_workers=workers, max_corrupt_fraction=0.2) as ld:
        for _ in ld.epoch(0):
            pass
        assert ld.state()["corrupt_records"] == [3, 11, 19]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt record 3 (image 3)" in said and "truncated" in said


def wrong_sizes_dataset(folder: Path, prop: str = "") -> RecordDataset:
    """12 images: 8 at 112x112 RGB, record 2 at 150x200, 5 at 56x56, 8 grey, 11 at 112x96 (WxH)."""
    with InsightfaceWriter(folder, 3) as w:
        for i in range(12):
            img = {2: face(i, (150, 200)), 5: face(i, (56, 56)), 11: face(i, (96, 112))}.get(i, face(i))
            w.add(pil_bytes(img[:, :, 0]) if i == 8 else cv_jpeg(img), i // 4)
    if prop:
        (folder / "property").write_text(prop)
    return RecordDataset(folder)


def test_wrong_sizes_are_resized_and_counted_skipped_or_refused(tmp_path, caplog):
    ds = wrong_sizes_dataset(tmp_path)
    with caplog.at_level(logging.WARNING), RecordLoader(ds, 4, num_workers=0) as ld:
        assert "4 of 12 sampled images are not 112x112x3" in caplog.text
        batches = [x for x, _ in ld.epoch(0)]
        assert ld.health.wrong_size == {2: "200x150x3", 5: "56x56x3", 8: "112x112x1", 11: "112x96x3"}
        assert all(b.shape == (4, 3, 112, 112) for b in batches)
    with RecordLoader(ds, 4, num_workers=0, on_wrong_size="skip", max_corrupt_fraction=0) as ld:
        used = np.concatenate([y for _, y in ld.epoch(0)])
        assert len(ld.health.wrong_size) == 4 and not ld.health.corrupt and len(used) == 12
    with pytest.raises(DatasetError, match=r"4 of 12 sampled images are not 112x112x3 .*record 3 is 200x150x3"):
        RecordLoader(ds, 4, num_workers=0, on_wrong_size="error")


def rec(*argv) -> int:
    return run_cli(rec_main, [str(a) for a in argv])


def test_validate_reports_each_kind_with_counts(tmp_path, capsys):
    ds = wrong_sizes_dataset(tmp_path / "sizes", "3,112,112")
    assert rec("validate", ds.path.parent, "--workers", "1") == 0  # sizes and channels: warnings
    out = capsys.readouterr().out
    assert "wrong size: record 3 (image 2): 200x150x3, expected 112x112 (WxH, property)" in out
    assert "wrong channels: record 9 (image 8): 112x112x1" in out
    assert "0 damaged, 3 wrong size, 1 wrong channels, 0 out-of-range label, 0 identity mismatch, 0 empty classes: ok with 4" in out
    bad = damaged_set(tmp_path)
    with InsightfaceWriter(tmp_path / "bad", 2) as w:
        for i, data in enumerate([cv_jpeg(face(0)), *bad.values(), cv_jpeg(face(1))]):
            w.add(data, i * 2 // 5)
    assert rec("validate", tmp_path / "bad") == 1
    out = capsys.readouterr().out
    assert "damaged: record 2 (image 1): truncated" in out and "3 damaged" in out and "FAILED" in out
    assert "damaged: record 3 (image 2): " in out and "damaged: record 4 (image 3): truncated: no IEND" in out


def test_flat_rec_without_property_warns_about_empty_classes(tmp_path, caplog, capsys):
    with FlatWriter(tmp_path / "train.rec") as w:
        for i, label in enumerate([0, 3, 500, 7]):
            w.add(cv_jpeg(face(i)), label)
    with caplog.at_level(logging.WARNING):
        ds = RecordDataset(tmp_path / "train.rec")
    assert ds.num_classes == 501 and ds.empty_classes == 497
    assert "num_classes = largest label + 1 = 501, and 497 of those classes have no image" in caplog.text
    assert rec("validate", tmp_path / "train.rec", "--workers", "1") == 0
    assert "empty classes: 497 of 501 classes (largest label + 1, no property file)" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_with_no_decodable_image_stops_with_a_dataset_error(tmp_path, workers):
    """Every record damaged: the batch and its spares run out; the loader (or its worker) says so."""
    cut = cut_with_head(cv_jpeg(face(3)), 0.4, tmp_path)
    with FlatWriter(tmp_path / "train.rec") as w:
        for i in range(8):
            w.add(cut, i % 2)
    ds = RecordDataset(tmp_path / "train.rec")
    with RecordLoader(ds, 4, num_workers=workers, max_corrupt_fraction=1.0) as ld:
        with pytest.raises(DatasetError, match=r"no image of a batch of 4 \(and 8 spares\) decodes"):
            next(iter(ld.epoch(0)))


def test_every_check_reads_a_record_through_read_image(tmp_path, monkeypatch):
    """decode (the loader), the header sample (at open), check_record (validate) and rec inspect:
    one read → unpack → decode, written with plain mx.recordio here; they agree on each record."""
    import mxnet as mx

    from pfc_mx.data import checks
    good, grey = cv_jpeg(face(0)), cv2.imencode(".jpg", cv2.cvtColor(face(1), cv2.COLOR_RGB2GRAY))[1].tobytes()
    payloads = [good, good[:len(good) // 3], grey, cv_jpeg(face(2, (100, 90)))]
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    for k, data in enumerate(payloads):
        w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, float(k % 2), k, 0), data))
    w.close()
    ds = RecordDataset(tmp_path)
    calls = []
    real = checks.read_image
    monkeypatch.setattr(checks, "read_image", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    assert [checks.check_record(ds, i, (112, 112))[0] for i in range(4)] == ["", "damaged", "wrong channels",
                                                                           "wrong size"]
    assert [checks.decode(ds, i)[1] != "" for i in range(4)] == [False, True, False, False]
    assert checks._header_shape(ds, 3) == (100, 90, 3) and checks._header_shape(ds, 1) is None
    assert calls == [0, 1, 2, 3, 0, 1, 2, 3, 3, 1]
    img, fault, info = real(ds, 0)
    assert fault == "" and img.shape == (112, 112, 3) and (info.height, info.width, info.channels) == (112, 112, 3)
    assert real(ds, 2, decode=False)[0] is None and real(ds, 2, decode=False)[2].channels == 1
