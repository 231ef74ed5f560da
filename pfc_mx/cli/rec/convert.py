"""rec unpack and rec shuffle: an existing dataset's records as image files, or in a new order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError


def _ext(data: bytes) -> str:
    return ".png" if data[:4] == b"\x89PNG" else ".jpg" if data[:2] == b"\xff\xd8" else ".bin"


def cmd_unpack(args) -> int:
    ds = RecordDataset(args.data, strict_labels=False)
    out = Path(args.out)
    n = ds.num_images if args.limit is None else min(args.limit, ds.num_images)
    width = max(5, len(str(ds.num_classes - 1)))
    for i in tqdm(range(n), desc="unpacking", unit="img", disable=None, leave=False):
        data, label = ds.read(i)
        folder = out / f"{label:0{width}d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{ds.keys[i]:08d}{_ext(data)}").write_bytes(data)
    print(f"unpacked {n} images of {ds.path} into {out}")
    return 0


def cmd_shuffle(args) -> int:
    from pfc_mx.data.writer import FlatWriter, InsightfaceWriter

    ds = RecordDataset(args.data)
    out = Path(args.out)
    rec = out if out.suffix == ".rec" else out / "train.rec"
    if rec.resolve() == ds.path.resolve():
        raise DatasetError(f"{rec}: shuffle writes a new dataset; give another output")
    rng = np.random.default_rng(args.seed)
    if args.layout == "flat":
        order = rng.permutation(ds.num_images)
        with FlatWriter(rec) as writer:
            for i in tqdm(order, desc="shuffling", unit="img", disable=None, leave=False):
                writer.add(ds.read(int(i))[0], int(ds.labels[i]))
        if ds.property_path.is_file():
            (rec.parent / "property").write_text(ds.property_path.read_text())
    else:
        group = ds.labels.astype(np.int64)
        ranges = ds.identity_ranges()
        if len(ranges) == ds.num_classes:  # keep the source's identity blocks (label noise stays in place)
            for c, (lo, hi) in enumerate(ranges):
                group[lo - 1:hi - 1] = c
        blocks = rng.permutation(ds.num_classes)
        with InsightfaceWriter(rec.parent, ds.num_classes, ds.image_size or (IMAGE_SIZE, IMAGE_SIZE), rec.stem) as writer:
            for c in tqdm(blocks, desc="shuffling", unit="class", disable=None, leave=False):
                for i in rng.permutation(np.flatnonzero(group == c)):
                    writer.add(ds.read(int(i))[0], int(ds.labels[i]), int(c))
    print(f"wrote {rec}: {ds.num_images} images in random order ({args.layout} layout, seed {args.seed})")
    return 0
