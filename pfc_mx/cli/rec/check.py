"""rec inspect and rec validate: what a dataset holds, and whether every record reads and decodes."""
from __future__ import annotations

from collections import Counter
from typing import List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from pfc_mx.data.checks import check_record, expected_size, read_image
from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError
from pfc_mx.parallel import parallel_map

_DS: Optional[RecordDataset] = None  # the dataset of validate's worker processes


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
        img, _, info = read_image(ds, int(i))
        sizes["damaged" if img is None else f"{img.shape[1]}x{img.shape[0]}x{info.channels or 3}"] += 1
    print(f"image sizes (sample of {len(sample)}, WxHxC)  " + "  ".join(f"{k}: {v}" for k, v in sizes.most_common()))
    return 0


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


def _identity_mismatches(ds: RecordDataset) -> List[Tuple[int, str]]:
    """(image index, detail) of every image whose header class differs from its identity record's class
    (insightface layout); damaged identity records are one entry (image -1) with the reason."""
    try:
        given = ds.identity_labels()
    except DatasetError as e:
        return [(-1, str(e))]
    if given is None:
        return []
    a = ds.identity_range[0]
    return [(int(i), f"header class {ds.labels[i]}, identity record {a + int(given[i])} says class {given[i]}")
            for i in np.flatnonzero(given != ds.labels)]


def cmd_validate(args) -> int:
    """Read and decode every record; report damaged ones, sizes, channels, labels and empty classes by kind.

    Exit 1 when a record is damaged or has a label outside [0, num_classes); sizes, channels and
    empty classes are warnings (training resizes or skips them: data.on_wrong_size).
    """
    global _DS
    ds = RecordDataset(args.data, strict_labels=False, labels_from="headers")
    _DS = ds
    size = expected_size(ds)
    spans = [(lo, min(lo + 256, ds.num_images)) for lo in range(0, ds.num_images, 256)]
    problems: dict = {k: [] for k in KINDS}
    bar = tqdm(total=ds.num_images, desc="decoding", unit="img", disable=None, leave=False)
    with parallel_map(_check_range, spans, args.workers) as results:
        for span, found in zip(spans, results):
            for i, kind, detail in found:
                problems[kind].append((i, detail))
            bar.update(span[1] - span[0])
    bar.close()
    problems["out-of-range label"] = [(int(i), f"label {ds.labels[i]} outside [0, {ds.num_classes})")
                                      for i in ds.bad_labels]
    problems["identity mismatch"] = _identity_mismatches(ds)
    want = {"wrong size": f"{size[1]}x{size[0]} (WxH, {'property' if ds.image_size else 'the training input'})",
            "wrong channels": "3 channels (RGB)"}
    for kind, items in problems.items():
        for i, detail in items[:args.show]:
            extra = f", expected {want[kind]}" if kind in want else ""
            where = f"record {ds.keys[i]} (image {i})" if i >= 0 else "identity records"
            print(f"{kind}: {where}: {detail}{extra}")
        if len(items) > args.show:
            print(f"... and {len(items) - args.show} more {kind} records")
    if ds.image_size and tuple(ds.image_size) != (IMAGE_SIZE, IMAGE_SIZE):
        print(f"note: {ds.property_path} says {ds.image_size[1]}x{ds.image_size[0]}; training resizes every image "
              f"to {IMAGE_SIZE}x{IMAGE_SIZE}")
    if ds.empty_classes:
        origin = "property" if ds.property_path.is_file() else "largest label + 1, no property file"
        print(f"empty classes: {ds.empty_classes} of {ds.num_classes} classes ({origin}) have no image")
    failed = len(problems["damaged"]) + len(problems["out-of-range label"]) + len(problems["identity mismatch"])
    warned = len(problems["wrong size"]) + len(problems["wrong channels"]) + ds.empty_classes
    counts = ", ".join(f"{len(v)} {k}" for k, v in problems.items())
    verdict = "FAILED" if failed else f"ok with {warned} warning(s)" if warned else "ok"
    print(f"{ds.path}: {ds.num_images} images, {ds.num_classes} classes, {counts}, {ds.empty_classes} empty "
          f"classes: {verdict}")
    return 1 if failed else 0
