"""Face RecordIO datasets on the command line: inspect, validate, build, unpack, shuffle, synth.

    python tools/rec.py inspect  DATA                 counts, class histogram, sampled image sizes
    python tools/rec.py validate DATA                 read + decode every record; exit 1 on damaged ones
    python tools/rec.py build    SRC OUT              image folder (one sub-folder per identity) -> insightface layout
    python tools/rec.py build    --list L.lst OUT     im2rec list "index<TAB>label<TAB>path" -> insightface layout
    python tools/rec.py unpack   DATA OUT             OUT/<class>/<record key>.<jpg|png>
    python tools/rec.py shuffle  DATA OUT             records in random order (flat layout by default)
    python tools/rec.py synth    OUT --identities N   the synthetic face-identity dataset
    python tools/rec.py pairs    PAIRS.txt OUT.bin    verification pairs "a.jpg b.jpg 1|0" -> insightface .bin

DATA is a folder with train.rec/train.idx[/property] or a .rec with its .idx beside it.
shuffle --layout flat writes every image at keys 0..n-1 in a seeded random order (what
sequential readers such as mx.io.ImageRecordIter need); --layout insightface keeps each
identity's images contiguous, because identity records can only name a contiguous range:
it shuffles the order of the identity blocks and the images inside each block, and
rebuilds the header and identity records (identity record of class c stays at key a + c).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from pfc_mx.cli import ArgumentParser, fraction, int_at_least, non_negative_int, number, positive_int, run_cli
from pfc_mx.data.checks import check_record, expected_size
from pfc_mx.data.integrity import decode_checked
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError

quality = number(int, 0, 100, what="in [0, 100]")
below_one = number(float, 0.0, 1.0, high_open=True, what="in [0, 1)")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_DS: Optional[RecordDataset] = None  # the dataset of validate's worker processes


def _pool(workers: int):
    return mp.get_context("fork" if sys.platform.startswith("linux") else None).Pool(workers)


# ---------------------------------------------------------------- inspect
def cmd_inspect(args) -> int:
    ds = RecordDataset(args.data)
    counts = ds.class_counts
    print(f"dataset   {ds.path} ({ds.layout} layout, {ds.file_size / 2**20:.1f} MiB)")
    print(f"images    {ds.num_images}")
    print(f"classes   {ds.num_classes}" + (f" (property: {ds.property_path})" if ds.property_path.is_file() else
                                          " (max label + 1; no property file)"))
    if ds.layout == "insightface":
        a, b = ds.identity_range
        print(f"identity records  {b - a} (keys {a}..{b - 1})")
    nz = counts[counts > 0]
    print(f"images per class  min {counts.min()}  median {np.median(counts):g}  mean {counts.mean():.1f}  "
          f"max {counts.max()}  empty classes {int((counts == 0).sum())}")
    edges = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9]
    hist = np.histogram(nz, bins=edges)[0]
    print("class size histogram  " + "  ".join(
        f"[{lo},{hi if hi < 10**9 else 'inf'}):{n}" for lo, hi, n in zip(edges, edges[1:], hist) if n))
    rng = np.random.default_rng(0)
    sample = rng.choice(ds.num_images, min(args.sample, ds.num_images), replace=False)
    sizes: Counter = Counter()
    for i in sample:
        img, _ = ds.read(int(i))
        im = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_UNCHANGED)
        sizes["corrupt" if im is None else f"{im.shape[1]}x{im.shape[0]}x{im.shape[2] if im.ndim == 3 else 1}"] += 1
    print(f"image sizes (sample of {len(sample)}, WxHxC)  " + "  ".join(f"{k}: {v}" for k, v in sizes.most_common()))
    return 0


# ---------------------------------------------------------------- validate
KINDS = ("damaged", "wrong size", "wrong channels")


def _check_range(span: Tuple[int, int]) -> List[Tuple[int, str, str]]:
    """(image index, kind, detail) of the problem images in [start, end) of validate's dataset."""
    size = expected_size(_DS)
    found = []
    for i in range(*span):
        kind, detail = check_record(_DS, i, size)
        if kind:
            found.append((i, kind, detail))
    return found


def cmd_validate(args) -> int:
    """Read and decode every record; report damaged ones, sizes, channels, labels and empty classes by kind.

    Exit 1 when a record is damaged or has a label outside [0, num_classes); sizes, channels and
    empty classes are warnings (training resizes or skips them: data.on_wrong_size).
    """
    global _DS
    ds = RecordDataset(args.data, strict_labels=False)
    _DS = ds
    size = expected_size(ds)
    spans = [(lo, min(lo + 256, ds.num_images)) for lo in range(0, ds.num_images, 256)]
    problems: dict = {k: [] for k in KINDS}
    bar = tqdm(total=ds.num_images, desc="decoding", unit="img", disable=None, leave=False)
    pool = _pool(args.workers) if args.workers > 1 else None
    for span, found in zip(spans, pool.imap(_check_range, spans) if pool else map(_check_range, spans)):
        for i, kind, detail in found:
            problems[kind].append((i, detail))
        bar.update(span[1] - span[0])
    bar.close()
    if pool:
        pool.close()
        pool.join()
    problems["out-of-range label"] = [(int(i), f"label {ds.labels[i]} outside [0, {ds.num_classes})")
                                      for i in ds.bad_labels]
    want = {"wrong size": f"{size[1]}x{size[0]} (WxH, {'property' if ds.image_size else 'the training input'})",
            "wrong channels": "3 channels (RGB)"}
    for kind, items in problems.items():
        for i, detail in items[:args.show]:
            extra = f", expected {want[kind]}" if kind in want else ""
            print(f"{kind}: record {ds.keys[i]} (image {i}): {detail}{extra}")
        if len(items) > args.show:
            print(f"... and {len(items) - args.show} more {kind} records")
    if ds.image_size and tuple(ds.image_size) != (112, 112):
        print(f"note: {ds.property_path} says {ds.image_size[1]}x{ds.image_size[0]}; training resizes every image "
              "to 112x112")
    if ds.empty_classes:
        origin = "property" if ds.property_path.is_file() else "largest label + 1, no property file"
        print(f"empty classes: {ds.empty_classes} of {ds.num_classes} classes ({origin}) have no image")
    failed = len(problems["damaged"]) + len(problems["out-of-range label"])
    warned = len(problems["wrong size"]) + len(problems["wrong channels"]) + ds.empty_classes
    counts = ", ".join(f"{len(v)} {k}" for k, v in problems.items())
    verdict = "FAILED" if failed else f"ok with {warned} warning(s)" if warned else "ok"
    print(f"{ds.path}: {ds.num_images} images, {ds.num_classes} classes, {counts}, {ds.empty_classes} empty "
          f"classes: {verdict}")
    return 1 if failed else 0


# ---------------------------------------------------------------- build
def _list_folder(src: Path) -> Tuple[List[Tuple[int, Path]], int]:
    if not src.is_dir():
        raise DatasetError(f"{src}: no such image folder")
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{src}: no identity sub-folders")
    items = [(c, f) for c, d in enumerate(classes) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    return items, len(classes)


def _list_file(lst: Path, root: Path) -> Tuple[List[Tuple[int, Path]], int]:
    if not lst.is_file():
        raise DatasetError(f"{lst}: no such list file")
    items = []
    for n, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            label = int(float(fields[1]))
        except (IndexError, ValueError):
            raise DatasetError(f"{lst}:{n}: expected 'index<TAB>label<TAB>path', got {line!r}")
        if label < 0:
            raise DatasetError(f"{lst}:{n}: negative label {label}")
        items.append((label, root / fields[-1]))
    if not items:
        raise DatasetError(f"{lst}: empty list")
    items.sort(key=lambda t: t[0])  # stable: the list's order inside each class
    return items, max(label for label, _ in items) + 1


def _encode_one(job: Tuple[str, int, int, bool]) -> "bytes | str":
    """Bytes to store for one source image: its own bytes if it decodes at the target size, else
    a resized (or --reencode) JPEG; a str saying why when it is unreadable or damaged."""
    path, size, quality, reencode = job
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    img, fault, _ = decode_checked(raw)
    if img is None:
        return fault
    if img.shape[:2] == (size, size) and not reencode:
        return raw
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def cmd_build(args) -> int:
    from pfc_mx.data.writer import InsightfaceWriter

    out = Path(args.out)
    if (out / "train.rec").exists() and not args.force:
        raise DatasetError(f"{out / 'train.rec'} exists (use --force to overwrite)")
    if args.list:
        lst = Path(args.list)
        items, num_classes = _list_file(lst, Path(args.root) if args.root else lst.parent)
    elif args.src:
        items, num_classes = _list_folder(Path(args.src))
    else:
        raise DatasetError("build needs an image folder SRC or --list FILE")
    jobs = [(str(p), args.size, args.quality, args.reencode) for _, p in items]
    skipped = 0
    bar = tqdm(total=len(jobs), desc="encoding", unit="img", disable=None, leave=False)
    pool = _pool(args.workers) if args.workers > 1 else None
    results = pool.imap(_encode_one, jobs, chunksize=16) if pool else map(_encode_one, jobs)
    with InsightfaceWriter(out, num_classes, (args.size, args.size)) as writer:
        for (label, path), data in zip(items, results):
            bar.update()
            if isinstance(data, str):
                skipped += 1
                print(f"warning: skipped {path}: {data}", file=sys.stderr)
                continue
            writer.add(data, label)
    bar.close()
    if pool:
        pool.close()
        pool.join()
    print(f"wrote {out / 'train.rec'}: {writer.count} images, {num_classes} classes, {skipped} skipped")
    return 0


# ---------------------------------------------------------------- unpack
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


# ---------------------------------------------------------------- shuffle
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
        with InsightfaceWriter(rec.parent, ds.num_classes, ds.image_size or (112, 112), rec.stem) as writer:
            for c in tqdm(blocks, desc="shuffling", unit="class", disable=None, leave=False):
                for i in rng.permutation(np.flatnonzero(group == c)):
                    writer.add(ds.read(int(i))[0], int(ds.labels[i]), int(c))
    print(f"wrote {rec}: {ds.num_images} images in random order ({args.layout} layout, seed {args.seed})")
    return 0


# ---------------------------------------------------------------- pairs
def cmd_pairs(args) -> int:
    """Write a .bin of the pairs listed one per line: 'image_a image_b 1' (same person) or '... 0'."""
    from pfc_mx.data.verification_bin import write_bin

    lst = Path(args.pairs)
    if not lst.is_file():
        raise DatasetError(f"{lst}: no such pairs list")
    root = Path(args.root) if args.root else lst.parent
    images, issame = [], []
    for n, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise DatasetError(f"{lst}:{n}: expected 'image_a image_b 1|0', got {line!r}")
        for name in fields[:2]:
            data = _encode_one((str(root / name), args.size, 95, False))
            if isinstance(data, str):
                raise DatasetError(f"{lst}:{n}: {root / name}: {data}")
            images.append(data)
        issame.append(fields[2] == "1")
    if not issame:
        raise DatasetError(f"{lst}: no pairs listed")
    write_bin(args.out, images, issame)
    print(f"wrote {args.out}: {len(issame)} pairs ({sum(issame)} same, {len(issame) - sum(issame)} different)")
    return 0


# ---------------------------------------------------------------- synth
def cmd_synth(args) -> int:
    from pfc_mx.data.synthetic import generate

    summary = generate(args.out, args.identities, args.images_per_identity, long_tail=args.long_tail,
                       label_flip=args.label_flip, duplicate_fraction=args.duplicate_fraction,
                       holdout_identities=args.holdout, num_pairs=args.pairs, bin_name=args.bin_name,
                       seed=args.seed, workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="counts, class histogram, sampled image sizes")
    p.add_argument("data")
    p.add_argument("--sample", type=positive_int, default=200, help="images decoded for the size summary")
    p = sub.add_parser("validate", help="read and decode every record: damaged ones (exit 1), out-of-range labels "
                       "(exit 1), sizes, channels, empty classes")
    p.add_argument("data")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--show", type=non_negative_int, default=20, help="problems listed per kind")
    p = sub.add_parser("build", help="image folder or im2rec list -> insightface layout")
    p.add_argument("src", nargs="?", help="folder with one sub-folder per identity (sorted names -> class ids)")
    p.add_argument("out", help="output folder (train.rec, train.idx, property)")
    p.add_argument("--list", help="im2rec list file 'index<TAB>label<TAB>path' instead of SRC")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--size", type=int_at_least(8), default=112, help="images of another size are resized to SIZE×SIZE")
    p.add_argument("--quality", type=quality, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--reencode", action="store_true", help="re-encode every image as JPEG (default: keep bytes)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--force", action="store_true", help="overwrite an existing train.rec")
    p = sub.add_parser("unpack", help="records -> OUT/<class>/<key>.<ext>")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--limit", type=non_negative_int, help="only the first N images")
    p = sub.add_parser("shuffle", help="records in a seeded random order into a new dataset")
    p.add_argument("data")
    p.add_argument("out", help="output folder (train.rec) or .rec path")
    p.add_argument("--layout", choices=("flat", "insightface"), default="flat")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p = sub.add_parser("pairs", help="verification pairs list -> insightface .bin")
    p.add_argument("pairs", help="text file, one pair per line: 'image_a image_b 1|0' (1: same person)")
    p.add_argument("out", help="the .bin to write")
    p.add_argument("--root", help="folder the image paths are relative to (default: the list's folder)")
    p.add_argument("--size", type=int_at_least(8), default=112, help="images of another size are resized")
    p = sub.add_parser("synth", help="synthetic face-identity dataset + held-out .bin pairs")
    p.add_argument("out")
    p.add_argument("--identities", type=positive_int, required=True, help="training classes")
    p.add_argument("--images-per-identity", type=positive_int, default=24)
    p.add_argument("--long-tail", action="store_true", help="Pareto-distributed images per class")
    p.add_argument("--label-flip", type=fraction, default=0.0, help="fraction of images with a random wrong label")
    p.add_argument("--duplicate-fraction", type=below_one, default=0.0,
                   help="fraction of classes that are another class's identity")
    p.add_argument("--holdout", type=int_at_least(2), help="held-out identities for the .bin (default identities/4)")
    p.add_argument("--pairs", type=int_at_least(2), help="verification pairs (default min(600, 4·holdout))")
    p.add_argument("--bin-name", default="synthetic_val")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    return {"inspect": cmd_inspect, "validate": cmd_validate, "build": cmd_build, "unpack": cmd_unpack,
            "shuffle": cmd_shuffle, "synth": cmd_synth, "pairs": cmd_pairs}[args.command](args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
