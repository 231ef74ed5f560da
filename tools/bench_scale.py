#!/usr/bin/env python
"""A scale rehearsal on your own machine: open, train, checkpoint and resume at the papers' sizes.

    python tools/bench_scale.py --shape ms1mv3 --train-classes 10000000 --dim 128
    python tools/bench_scale.py --rec /data/glint360k --train-classes 360232 --dim 512
    python tools/bench_scale.py --shape webface42m --skip-train       # opening and loading only

Phases, each in its own process so memory figures are its own:
  write   an insightface-layout rec shaped like MS1MV3 / Glint360K / WebFace42M (pfc_mx.data.shaped:
          tiny images, vectorised, with progress and ETA), unless --rec names yours;
  open    RecordDataset cold (the rec's and index's pages dropped from the page cache) and warm, beside
          insightface's FaceImageIter approach (MXIndexedRecordIO + record 0 + every identity record):
          seconds, bytes read (pages of the files brought into the cache), peak RSS growth, arrays kept;
  loader  RecordLoader with 2 workers: the private memory each worker adds, and one epoch's permutation;
  train   `--steps` steps on 2 ranks (horovodrun, Gloo) of a tiny backbone with --train-classes centers,
          checkpoint, stop; resume on 1 rank for `--steps` more and finish. Per rank: peak RSS beside the
          capacity planner's prediction of the head, checkpoint size, save and resume times.
Prints one table at the end (markdown) with the command that made it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pfc_mx.cli import non_negative_int, number, positive_int, run_cli  # noqa: E402
from pfc_mx.errors import ConfigError, DatasetError  # noqa: E402
from pfc_mx.proc_memory import private_kib, reset_peak_rss, status_kib  # noqa: E402


def probe_open(data: str, how: str) -> dict:
    """Open `data` our way ("ours") or FaceImageIter's way ("mxnet"); seconds, bytes read, RSS growth."""
    from pfc_mx.data.page_cache import resident_bytes
    from pfc_mx.data.recordio import RecordDataset, resolve_paths
    rec, idx, _ = resolve_paths(data)
    before = [resident_bytes(p) or 0 for p in (rec, idx)]
    import numpy as np  # noqa: F401  (imports before the measurement)
    import mxnet as mx
    reset_peak_rss()
    rss0 = status_kib("VmRSS")
    t = time.perf_counter()
    if how == "ours":
        ds = RecordDataset(data)
        kept = ds.offsets.nbytes + ds.labels.nbytes + ds.class_counts.nbytes + ds._identity_offsets.nbytes
        extra = {"images": ds.num_images, "classes": ds.num_classes, "labels_from": ds.label_source}
    else:
        r = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
        header, _ = mx.recordio.unpack(r.read_idx(0))
        a, b = int(header.label[0]), int(header.label[1])
        ranges = [mx.recordio.unpack(r.read_idx(k))[0].label for k in range(a, b)]
        kept, extra = 0, {"identities": len(ranges)}
    seconds = time.perf_counter() - t
    after = [resident_bytes(p) or 0 for p in (rec, idx)]
    return {"seconds": seconds, "read_rec": after[0] - before[0], "read_idx": after[1] - before[1],
            "rss_growth": (status_kib("VmHWM") - rss0) * 1024, "kept": kept, **extra}


def probe_loader(data: str) -> dict:
    """Private memory each of 2 loader workers adds after 3 batches, and one epoch permutation's seconds."""
    from pfc_mx.data.loader import RecordLoader
    from pfc_mx.data.recordio import RecordDataset
    ds = RecordDataset(data)
    t = time.perf_counter()
    with RecordLoader(ds, batch_size=64, num_workers=2, seed=0) as loader:
        permute = time.perf_counter()
        loader.sampler.permutation(0)
        permute = time.perf_counter() - permute
        it = loader.epoch(0)
        for _ in range(3):
            next(it)
        workers = [private_kib(p.pid) * 1024 for p in loader._workers]
    return {"workers_private": workers, "permutation_s": permute, "seconds": time.perf_counter() - t}


def probe_rank(out: str, argv: list) -> None:
    """Run train_horovod.py in this process (one rank); write its peak RSS to OUT/peak-<rank>.json."""
    import runpy
    rank = os.environ.get("HOROVOD_RANK", "0")
    t = time.perf_counter()
    sys.argv = [str(ROOT / "train_horovod.py")] + argv
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        Path(out, f"peak-{rank}.json").write_text(json.dumps({"peak_rss": status_kib("VmHWM") * 1024,
                                                              "seconds": time.perf_counter() - t}))


def _sub(args: list, timeout: float = 3600) -> dict:
    r = subprocess.run([sys.executable, __file__, "_probe"] + args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"bench_scale: probe {args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _progress(label: str):
    """progress(done, total): one line rewritten on a terminal, a line per tenth in a log."""
    t0, tty, shown = time.time(), sys.stdout.isatty(), [-1]

    def show(done: int, total: int) -> None:
        el = time.time() - t0
        eta = el / max(done, 1) * (total - done)
        tenth = 10 * done // max(total, 1)
        if tty or tenth > shown[0]:
            shown[0] = tenth
            print(f"{chr(13) if tty else ''}{label}: {done:,}/{total:,} records, {el:.0f} s, ETA {eta:.0f} s",
                  end="" if tty else "\n", flush=True)
    return show


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def phase_train(args, data: Path, out: Path, rows: list, logs: list) -> None:
    from pfc_mx.capacity import RunSpec, make_plan
    run = out / "run"
    sets = [f"data.rec={data}", f"data.num_classes={args.train_classes}", f"model.embedding_size={args.dim}",
            f"partial_fc.sample_rate={args.sample_rate}", f"data.batch_size={args.batch}", "data.num_workers=1",
            f"output.dir={run}", f"output.checkpoint_every={args.steps}", "output.log_every=1",
            "output.tensorboard=false", "eval.targets=[]", "output.keep=1"]
    cfg = [str(ROOT / "configs" / "demo.yaml"), "--set"]
    hvd = [str(Path(sys.executable).with_name("horovodrun")), "-np", "2", "-H", "localhost:2", "--gloo"]
    for ranks, steps in ((2, args.steps), (1, 2 * args.steps)):
        extra = [f"optim.max_steps={steps}"] + (["output.allow_changes=true"] if ranks == 1 else [])
        cmd = [sys.executable, __file__, "_probe", "rank", str(out), "--"] + cfg + sets + extra
        cmd = hvd + cmd if ranks == 2 else cmd
        print(f"train on {ranks} rank(s): {shlex.join(cmd[-3:])} ...", flush=True)
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t
        (out / f"train-{ranks}.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise SystemExit(f"bench_scale: training on {ranks} rank(s) failed (log: {out}/train-{ranks}.log)\n"
                             f"{(r.stdout + r.stderr)[-3000:]}")
        peaks = [json.loads((out / f"peak-{k}.json").read_text())["peak_rss"] for k in range(ranks)]
        plan = make_plan(RunSpec(num_classes=args.train_classes, world=ranks, batch=args.batch,
                                 embedding_size=args.dim, sample_rate=args.sample_rate, backbone="mobilefacenet",
                                 calibration="mxnet"))
        head = sum(i.bytes for i in plan.memory if i.name == "class centers + momentum")
        ckpt = max((run / "checkpoints").glob("step-*"))
        size = sum(p.stat().st_size for p in ckpt.iterdir())
        what = (f"train {steps} steps on 2 ranks, stop" if ranks == 2 else
                f"resume on 1 rank, finish (optim.max_steps={steps})")
        rows.append((f"{what}, C {args.train_classes:,}, D {args.dim}", f"{wall:.1f} s", " / ".join(_gib(p) for p in peaks),
                     f"planner: centers + momentum {_gib(head)}/rank; checkpoint {ckpt.name} {_gib(size)}"))
        logs.extend(line.strip() for line in (r.stdout + r.stderr).splitlines()
                    if re.search(r"(checkpoint|resum|centers).* in [0-9.]+ s", line))


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["_probe"]:
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "rank":
            probe_rank(rest[0], rest[2:])
            return 0
        print(json.dumps(probe_open(rest[0], rest[1]) if kind == "open" else probe_loader(rest[0])))
        return 0
    from pfc_mx.data.page_cache import evict
    from pfc_mx.data.shaped import SHAPES, write_shaped
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="ms1mv3")
    p.add_argument("--images", type=non_negative_int, default=0, help="instead of --shape: this many images ...")
    p.add_argument("--classes", type=non_negative_int, default=0, help="... of this many identities")
    p.add_argument("--image-bytes", type=non_negative_int, default=0, help="record size of a real face (~3600); 0: tiny PNGs")
    p.add_argument("--rec", help="your own rec (folder or .rec) instead of writing one")
    p.add_argument("--out", default=str(ROOT / "work_dirs" / "scale"))
    p.add_argument("--train-classes", type=positive_int, default=10_000_000)
    p.add_argument("--dim", type=positive_int, default=128)
    p.add_argument("--sample-rate", type=number(float, 0.0, 1.0, low_open=True, what="in (0, 1]"), default=0.1)
    p.add_argument("--batch", type=positive_int, default=64, help="per rank")
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--reference", choices=("auto", "always", "never"), default="auto",
                   help="open the rec FaceImageIter's way too (auto: up to 10 M index lines; MXIndexedRecordIO "
                        "keeps the index in a Python dict, ~100 bytes a line)")
    p.add_argument("--timeout", type=number(float, 0.0, low_open=True, what="> 0"), default=3600, help="seconds per training run")
    args = p.parse_args(argv)
    if bool(args.images) != bool(args.classes) or args.classes > args.images:
        raise ConfigError("--images and --classes go together, with 1 <= classes <= images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, logs = [], []
    if args.rec:
        data = Path(args.rec)
    else:
        images, classes = (args.images, args.classes) if args.images else SHAPES[args.shape]
        data = out / f"data-{images}x{classes}-{args.image_bytes}"
        if not (data / "property").is_file():
            s = write_shaped(data, images, classes, args.image_bytes, progress=_progress("write"))
            print()
            rows.append((f"write {images:,} images, {classes:,} identities", f"{s['seconds']:.1f} s", "",
                         f"rec {_gib(s['rec_bytes'])}, idx {_gib(s['idx_bytes'])}"))
    from pfc_mx.data.recordio import resolve_paths
    rec, idx, _ = resolve_paths(data)
    if not (rec.is_file() and idx.is_file()):
        raise DatasetError(f"{data}: no train.rec with its train.idx there")
    size = rec.stat().st_size
    lines = idx.stat().st_size // 20  # about 20 bytes an index line
    reference = args.reference == "always" or (args.reference == "auto" and lines <= 10_000_000)
    cache = out / "cache"  # our parsed index and labels for this rec (PFC_MX_DATA_CACHE)
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["PFC_MX_DATA_CACHE"] = str(cache)
    for temp in ("first", "cold", "warm"):
        res = {}
        for how in ("ours", "mxnet") if reference else ("ours",):
            files = [rec, idx] + sorted(cache.glob("*"))
            if temp != "warm" and not all(evict(p) for p in files):
                print("note: the page cache keeps this file system's pages: 'cold' is warm here")
            res[how] = _sub(["open", str(data), how])
        o = res["ours"]
        m = res.get("mxnet", {"seconds": float("nan"), "rss_growth": float("nan"), "read_rec": 0, "read_idx": 0})
        what = {"first": "first open, cold, nothing cached", "cold": "open, cold", "warm": "open, warm"}[temp]
        rows.append((f"{what} ({o['labels_from']})", f"{o['seconds']:.2f} s ({o['seconds'] / m['seconds']:.2f}× "
                     f"FaceImageIter's {m['seconds']:.2f} s)", f"+{_gib(o['rss_growth'])} "
                     f"({o['rss_growth'] / max(o['kept'], 1):.2f}× the {_gib(o['kept'])} kept; theirs "
                     f"+{_gib(m['rss_growth'])})", "" if temp == "warm" else f"read {_gib(o['read_rec'])} of the rec "
                     f"({100 * o['read_rec'] / size:.2f} %) + {_gib(o['read_idx'])} index; theirs "
                     f"{_gib(m['read_rec'] + m['read_idx'])}"))
    ld = _sub(["loader", str(data)])
    rows.append(("loader, 2 workers", f"permutation {ld['permutation_s']:.2f} s",
                 "workers +" + " / ".join(_gib(w) for w in ld["workers_private"]) + " private", ""))
    if not args.skip_train:
        phase_train(args, data, out, rows, logs)
    print(f"\n`python tools/bench_scale.py {shlex.join(sys.argv[1:])}`  (rec {_gib(size)})\n")
    print("| phase | time | memory | notes |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if logs:
        print("\nThe runs' own checkpoint lines:\n" + "\n".join(f"    {line[-200:]}" for line in logs))
    return 0


if __name__ == "__main__":
    sys.exit(main() if sys.argv[1:2] == ["_probe"] else run_cli(main))
