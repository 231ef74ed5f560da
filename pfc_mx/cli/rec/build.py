"""rec build, rec pairs and rec synth: new datasets from the user's images, or generated faces."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Tuple

import cv2
from tqdm import tqdm

from pfc_mx.data.integrity import decode_checked
from pfc_mx.errors import DatasetError
from pfc_mx.parallel import parallel_map

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


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
    with parallel_map(_encode_one, jobs, args.workers, chunksize=16) as results, \
            InsightfaceWriter(out, num_classes, (args.size, args.size)) as writer:
        for (label, path), data in zip(items, results):
            bar.update()
            if isinstance(data, str):
                skipped += 1
                print(f"warning: skipped {path}: {data}", file=sys.stderr)
                continue
            writer.add(data, label)
    bar.close()
    print(f"wrote {out / 'train.rec'}: {writer.count} images, {num_classes} classes, {skipped} skipped")
    return 0


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


def cmd_synth(args) -> int:
    from pfc_mx.data.synthetic import generate

    summary = generate(args.out, args.identities, args.images_per_identity, long_tail=args.long_tail,
                       label_flip=args.label_flip, duplicate_fraction=args.duplicate_fraction,
                       holdout_identities=args.holdout, num_pairs=args.pairs, bin_name=args.bin_name,
                       seed=args.seed, workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0
