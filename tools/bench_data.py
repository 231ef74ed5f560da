"""Data pipeline throughput: RecordLoader vs mx.io.ImageRecordIter vs a plain Python loop.

    python tools/bench_data.py [--images 4096] [--batch 128] [--workers 1 2] [--repeat 3]

Writes a flat rec of 112×112 synthetic-face JPEGs (quality 90-95, as the generator makes
them) into a temporary folder, then measures decoded + mirrored uint8 images per second:

- RecordLoader with N worker processes (random mirror, batches of uint8 NCHW);
- mx.io.ImageRecordIter on the same rec, rand_mirror, shuffle, float32 NCHW, twice:
  with preprocess_threads=N as is (MXNet 1.9.1 then decodes with
  min(N, omp_get_num_procs() / 2) threads), and with ctx="cpu", MXNet's CPU-optimised
  variant, which decodes with omp_get_max_threads() threads, set to exactly N here;
- a single-threaded loop: MXIndexedRecordIO.read_idx -> mx.image.imdecode -> flip.

Every reader runs one pass of all images after a warm-up pass; the best of --repeat passes
counts. The readers run one after another in the same process, interleaved per repeat.
Prints one markdown table with ratios against ImageRecordIter (same N) and the plain loop.

A second table is the cost of the integrity check every RecordLoader decode makes
(pfc_mx.data.integrity.decode_checked: the JPEG/PNG structure walk and the capture of the
decoder's stderr) against a bare cv2.imdecode of the same in-memory images, one thread,
alternating chunk by chunk, each chunk's fastest of 3 x --repeat rounds.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

# MXNet reads OMP_NUM_THREADS once, when it loads; only then does ImageRecordIter(ctx="cpu")
# follow omp_set_num_threads (below) instead of halving the core count.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import pfc_mx  # noqa: E402,F401  (before mxnet: its OpenBLAS choice, pfc_mx.blas)
import cv2  # noqa: E402
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from pfc_mx.cli import ArgumentParser, positive_int, run_cli  # noqa: E402
from pfc_mx.data import faces  # noqa: E402
from pfc_mx.data.integrity import decode_checked, image_info  # noqa: E402
from pfc_mx.data.loader import RecordLoader  # noqa: E402
from pfc_mx.data.recordio import RecordDataset  # noqa: E402
from pfc_mx.data.writer import FlatWriter  # noqa: E402


def write_rec(path: Path, n: int, identities: int = 64) -> None:
    """n synthetic faces (round-robin over `identities`) as a flat rec with an index."""
    ids = [faces.identity(np.random.default_rng([0, 0, i])) for i in range(identities)]
    with FlatWriter(path) as w:
        for k in range(n):
            rng = np.random.default_rng([0, 1, k])
            img = faces.render(ids[k % identities], rng)
            w.add(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(90, 96))])[1].tobytes(),
                  k % identities)


def time_pass(run: Callable[[], int]) -> float:
    """Images per second of one call of run() (which returns the number of images it produced)."""
    t = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - t)


def ours(ds: RecordDataset, batch: int, workers: int) -> Callable[[], int]:
    loader = RecordLoader(ds, batch, num_workers=workers, prefetch=max(4, 2 * workers), mirror=True)
    state = {"epoch": 0}

    def run() -> int:
        n = 0
        for images, _ in loader.epoch(state["epoch"]):
            n += len(images)
        state["epoch"] += 1
        return n
    run.close = loader.close  # type: ignore[attr-defined]
    return run


def image_record_iter(rec: Path, batch: int, threads: int, cpu: bool) -> Callable[[], int]:
    kwargs = {}
    if cpu:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(threads)  # the OpenMP runtime libmxnet uses
        kwargs["ctx"] = "cpu"
    it = mx.io.ImageRecordIter(path_imgrec=str(rec), path_imgidx=str(rec.with_suffix(".idx")),
                               data_shape=(3, 112, 112), batch_size=batch, rand_mirror=True, shuffle=True,
                               preprocess_threads=threads, prefetch_buffer=4, round_batch=False, **kwargs)

    def run() -> int:
        it.reset()
        n = 0
        for b in it:
            b.data[0].wait_to_read()
            n += batch - b.pad
        return n
    return run


def plain_loop(rec: Path, n: int) -> Callable[[], int]:
    reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    order = np.random.default_rng(0).permutation(n)

    def run() -> int:
        for k in order:
            _, img = mx.recordio.unpack(reader.read_idx(int(k)))
            x = mx.image.imdecode(img)
            x = mx.nd.flip(x, axis=1)
            x.wait_to_read()
        return n
    return run


def integrity_cost(ds: RecordDataset, repeat: int, chunk: int = 128) -> Dict[str, float]:
    """Images/s of a bare cv2.imdecode, of decode_checked and of image_info alone on the same images.

    The methods alternate chunk by chunk, 3 x repeat rounds; each chunk counts with its fastest
    round, so other work on the machine (which only ever slows a round down) drops out.
    """
    images = [ds.read(i)[0] for i in range(ds.num_images)]
    flags = cv2.IMREAD_COLOR
    passes = {"imdecode": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), flags),
              "checked": decode_checked, "headers": image_info}
    chunks = [images[k:k + chunk] for k in range(0, len(images), chunk)]
    fastest = {k: [float("inf")] * len(chunks) for k in passes}
    for _ in range(3 * repeat):
        for c, part in enumerate(chunks):
            for name, fn in passes.items():
                t = time.perf_counter()
                for b in part:
                    fn(b)
                fastest[name][c] = min(fastest[name][c], time.perf_counter() - t)
    return {k: len(images) / sum(v) for k, v in fastest.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=4096)
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--data", help="folder to keep the generated rec in (default: a temporary one)")
    args = parser.parse_args(argv)
    n = args.images - args.images % args.batch
    cv2.setNumThreads(1)  # as in the loader's workers
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data or tmp)
        rec = folder / "bench.rec"
        if not rec.is_file():
            print(f"writing {n} synthetic 112x112 JPEGs to {rec} ...", flush=True)
            write_rec(rec, n)
        ds = RecordDataset(rec)
        readers: Dict[str, Callable[[], int]] = {"plain": plain_loop(rec, n)}
        for w in args.workers:
            readers[f"default{w}"] = image_record_iter(rec, args.batch, w, cpu=False)
            readers[f"iter{w}"] = image_record_iter(rec, args.batch, w, cpu=True)
            readers[f"ours{w}"] = ours(ds, args.batch, w)
        best: Dict[str, float] = {k: 0.0 for k in readers}
        for run in readers.values():
            run()  # warm-up: page cache, worker start, iterator threads
        for _ in range(args.repeat):
            for name, run in readers.items():
                best[name] = max(best[name], time_pass(run))
        for run in readers.values():
            getattr(run, "close", lambda: None)()
        cost = integrity_cost(ds, args.repeat)
    cmd = "python tools/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n`{cmd.strip()}` — {n} images 112x112 JPEG, batch {args.batch}, best of {args.repeat} passes, "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| reader | N (workers / threads) | images/s | vs ImageRecordIter ctx=cpu, N threads | vs plain loop |")
    print("|---|---|---|---|---|")
    plain = best["plain"]
    print(f"| plain loop: read_idx → mx.image.imdecode → flip | 1 | {plain:,.0f} | | 1.00× |")
    for w in args.workers:
        it, me, default = best[f"iter{w}"], best[f"ours{w}"], best[f"default{w}"]
        print(f"| mx.io.ImageRecordIter, preprocess_threads={w} (default ctx) | {w} | {default:,.0f} | "
              f"{default / it:.2f}× | {default / plain:.2f}× |")
        print(f"| mx.io.ImageRecordIter, ctx=cpu, {w} OpenMP threads | {w} | {it:,.0f} | 1.00× | {it / plain:.2f}× |")
        print(f"| **pfc_mx RecordLoader**, num_workers={w} | {w} | {me:,.0f} | **{me / it:.2f}×** | "
              f"**{me / plain:.2f}×** |")
    bare, checked = cost["imdecode"], cost["checked"]
    extra_us = 1e6 / checked - 1e6 / bare
    print("\nIntegrity check (RecordLoader's decode_checked) against a bare decode, one thread, same images, "
          f"fastest of {3 * args.repeat} rounds per chunk of 128:\n")
    print("| decode | images/s | µs / image | decode throughput lost |")
    print("|---|---|---|---|")
    print(f"| cv2.imdecode alone | {bare:,.0f} | {1e6 / bare:.1f} | |")
    print(f"| **decode_checked** (structure walk + captured decoder messages + imdecode) | {checked:,.0f} | "
          f"{1e6 / checked:.1f} | **{100 * (1 - checked / bare):.1f} %** |")
    print(f"| image_info alone (the structure walk) | {cost['headers']:,.0f} | {1e6 / cost['headers']:.1f} | |")
    one = best[f"ours{args.workers[0]}"] / args.workers[0]
    print(f"\nThe check's {extra_us:.1f} µs per image is {100 * extra_us * one / 1e6:.1f} % of the time RecordLoader "
          f"spends per image and worker ({1e6 / one:.0f} µs at num_workers={args.workers[0]}).")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
