"""Plan a large Partial FC run: memory per GPU, bytes communicated per step, and whether it fits.

    python tools/plan.py --classes 29000000 --gpus 8 --batch 128 --sample-rate 0.1 --fp16 \
        --backbone iresnet50 --gpu-mem 32GB
    python tools/plan.py --config configs/webface42m_r100_pfc02.yaml --gpus 2x8 --gpu-mem 32GB

--gpus takes a count (8) or hosts × GPUs per host (2x8). With --config, the recipe gives
classes, batch, embedding size, sample rate, fp16, backbone and centers_on; flags override
it. Sizes take binary units (32GB = 32 GiB; a number alone is GiB). The arithmetic and its
assumptions live in pfc_mx/capacity/; the output prints both.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional, Tuple

from pfc_mx.capacity import (BACKBONES, CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_HEADROOM, GiB, MiB, Item, Plan,
                             RunSpec, fits, make_plan)
from pfc_mx.cli import ArgumentParser, run_cli
from pfc_mx.errors import ConfigError
from pfc_mx.head.options import CENTERS_ON

_UNITS = {"k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'32GB', '32G', '32GiB', '40960MB', '80' (GiB), '1000000B' → bytes.

    Units are binary, as GPU memory is labelled: a "32GB" V100 reports 32,510 MiB.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(?:([kmgt])(i?b)?|(b))?\s*", str(text).lower())
    if not m:
        raise ConfigError(f"memory size {text!r}: give a positive number with a unit, e.g. 32GB or 40960MB")
    unit = _UNITS[m.group(2)] if m.group(2) else (1 if m.group(4) else GiB)
    value = int(float(m.group(1)) * unit)
    if value <= 0:
        raise ConfigError(f"memory size {text!r} must be positive")
    return value


def parse_gpus(text: str) -> Tuple[int, int]:
    """'8' → (1 host, world 8); '2x8' → (2 hosts, world 16)."""
    m = re.fullmatch(r"\s*(-?\d+)\s*(?:[x×*]\s*(-?\d+))?\s*", str(text))
    if not m:
        raise ConfigError(f"--gpus {text!r}: give a count (8) or hosts x GPUs per host (2x8)")
    hosts, per_host = (1, int(m.group(1))) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))
    if hosts < 1 or per_host < 1:
        raise ConfigError(f"--gpus {text!r}: the number of GPUs (and hosts) must be positive")
    return hosts, hosts * per_host


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="recipe YAML giving the defaults of the run options below")
    p.add_argument("--classes", type=int, help="number of identities C")
    p.add_argument("--gpus", default="8", help="world size W, or hosts x GPUs per host (2x8); default 8")
    p.add_argument("--batch", type=int, help="batch per GPU (default 128)")
    p.add_argument("--embedding-size", type=int, help="embedding size D (default 512)")
    p.add_argument("--sample-rate", type=float, help="Partial FC sample rate in (0, 1] (default 1.0)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="mixed precision")
    p.add_argument("--backbone", help=f"one of {', '.join(BACKBONES)} (default iresnet50)")
    p.add_argument("--centers-on", choices=CENTERS_ON, help="where centers + momentum live")
    p.add_argument("--gpu-mem", help="GPU memory for the verdict, e.g. 32GB, 80GB, 24GiB")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help=f"fraction of GPU memory a 'fits' leaves free (default {DEFAULT_HEADROOM})")
    p.add_argument("--calibration", choices=sorted(CALIBRATIONS), default=DEFAULT_CALIBRATION,
                   help="which published measurement sets activations and overhead")
    p.add_argument("--activation-per-image", help="override: activation memory per image in fp32, e.g. 50MB")
    p.add_argument("--overhead", help="override: framework overhead per GPU, e.g. 1.5GB")
    return p


def _spec(args: argparse.Namespace) -> RunSpec:
    """RunSpec from the flags, falling back on --config, then on the defaults."""
    base = dict(num_classes=None, batch=128, embedding_size=512, sample_rate=1.0, fp16=False,
                backbone="iresnet50", centers_on="device")
    if args.config:
        from pfc_mx.config import load_config  # yaml only; no MXNet
        cfg = load_config(args.config)
        base.update(num_classes=cfg.data.num_classes or None, batch=cfg.data.batch_size,
                    embedding_size=cfg.model.embedding_size, sample_rate=cfg.partial_fc.sample_rate,
                    fp16=cfg.model.fp16, backbone=cfg.model.name, centers_on=cfg.partial_fc.centers_on)
    given = dict(num_classes=args.classes, batch=args.batch, embedding_size=args.embedding_size,
                 sample_rate=args.sample_rate, fp16=args.fp16, backbone=args.backbone,
                 centers_on=args.centers_on)
    base.update({k: v for k, v in given.items() if v is not None})
    if base["num_classes"] is None:
        raise ConfigError("--classes is required (or a --config whose data.num_classes is set)")
    hosts, world = parse_gpus(args.gpus)
    act = parse_size(args.activation_per_image) if args.activation_per_image else None
    overhead = parse_size(args.overhead) if args.overhead else None
    return RunSpec(world=world, hosts=hosts, calibration=args.calibration,
                   activation_bytes_per_image=act, overhead_bytes=overhead, **base)


def _table(title: str, first: str, items: List[Item], total_note: str, digits: int) -> List[str]:
    rows = [title, "", f"| {first} | MiB | how |", "|---|---:|---|"]
    rows += [f"| {i.name} | {i.bytes / MiB:,.{digits}f} | {i.formula} |" for i in items]
    total = sum(i.bytes for i in items)
    rows.append(f"| **total** | **{total / MiB:,.{digits}f}** | {total_note.format(gib=total / GiB)} |")
    return rows + [""]


def render(plan: Plan, gpu_bytes: Optional[int], headroom: float, command: str) -> str:
    """The tool's whole output as Markdown: command, memory table, verdict, traffic table, assumptions."""
    s = plan.spec
    head = (f"{s.num_classes:,} classes on {s.world} GPUs ({s.hosts} host{'s' * (s.hosts > 1)} × "
            f"{s.world // s.hosts}), {s.batch} per GPU (N = {s.world * s.batch:,}), D = {s.embedding_size}, "
            f"sample rate {s.sample_rate:g}, {'fp16' if s.fp16 else 'fp32'}, {s.backbone}, "
            f"centers on the {s.centers_on}")
    lines = [f"$ {command}", "", head, ""]
    lines += _table("Memory per GPU (rank 0, the largest shard)", "component", plan.memory, "{gib:.2f} GiB", 1)
    if gpu_bytes is not None:
        usable = (1.0 - headroom) * gpu_bytes
        verdict = "fits" if fits(plan.total_bytes, gpu_bytes, headroom) else "does not fit"
        lines += [f"Verdict: **{verdict}** in {gpu_bytes / GiB:.1f} GiB: estimate {plan.total_bytes / GiB:.2f} GiB "
                  f"= {plan.total_bytes / gpu_bytes:.0%} of the GPU; {headroom:.0%} headroom leaves "
                  f"{usable / GiB:.2f} GiB usable.", ""]
    lines += _table("Bytes each GPU sends per step", "collective", plan.comm, "{gib:.3f} GiB", 3)
    lines += ["Assumptions"] + [f"- {a}" for a in plan.assumptions]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if not 0.0 <= args.headroom < 1.0:
        raise ConfigError(f"--headroom must be in [0, 1), got {args.headroom!r}")
    plan = make_plan(_spec(args))
    gpu_bytes = parse_size(args.gpu_mem) if args.gpu_mem else None
    print(render(plan, gpu_bytes, args.headroom, " ".join(["python tools/plan.py"] + argv)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
