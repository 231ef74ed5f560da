"""What a run reports: per-rank log files, rank 0's console lines, metrics.jsonl, TensorBoard, a PNG plot."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pfc_mx import dist, strict_json
from pfc_mx.atomic import write_atomic

log = logging.getLogger("pfc_mx.train")


def _formatter() -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s rank{dist.rank()} %(levelname)s %(message)s", "%H:%M:%S")


def record_fatal(message: str, output: Optional[Path] = None) -> bool:
    """Write a message that ends the run into this rank's log file only (the caller prints it to the
    terminal). Before the run set up its logging, into <output>/logs/rank{r}.log if that folder exists
    (a run folder is never created just for an error). Returns whether a log file got it."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    opened = []
    if not handlers and output is not None and (output / "logs").is_dir():
        try:
            opened = [logging.FileHandler(output / "logs" / f"rank{dist.rank()}.log")]
        except OSError:
            return False
        opened[0].setFormatter(_formatter())
    record = logging.LogRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for h in handlers + opened:
        h.handle(record)
        h.flush()
    for h in opened:
        h.close()
    return bool(handlers + opened)


def setup_logging(output: Path) -> Path:
    """Log to <output>/logs/rank{r}.log on every rank and to the console on rank 0. Returns the log path."""
    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"rank{dist.rank()}.log"
    fmt = _formatter()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):  # the run owns its logging: drop earlier console handlers
        root.removeHandler(h)
    handlers: List[logging.Handler] = [logging.FileHandler(path)]
    if dist.rank() == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return path


def format_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    """Rank 0's metrics sink: metrics.jsonl (survives resume), TensorBoard scalars, console lines.

    On other ranks every method is a no-op.
    """

    def __init__(self, output: Path, total_steps: int, global_batch: int, start_step: int,
                 tensorboard: bool = True) -> None:
        self.active = dist.rank() == 0
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.metrics_path = output / "metrics.jsonl"
        self._t0, self._s0 = time.time(), start_step
        self._last_t, self._last_step = self._t0, start_step
        self._writer: Any = None
        self._bar: Any = None
        if not self.active:
            return
        self._truncate_after(start_step)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(str(output / "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run repeats them) and, with a warning, lines that do
        not parse (a write cut short by a full disk). The file is replaced atomically; a failure is
        logged, not raised (only rank 0 gets here)."""
        if not self.metrics_path.exists():
            return
        try:
            records, bad = _records(self.metrics_path.read_text())
            keep = [line for line, record in records if record.get("step", 0) <= step]
            if bad:
                log.warning("%s: dropped %d line(s) that do not parse (a write cut short)", self.metrics_path, bad)
            write_atomic(self.metrics_path, "".join(line + "\n" for line in keep))
        except OSError as e:
            log.warning("could not rewrite %s: %s; records past step %d stay in it", self.metrics_path, e, step)

    def _append(self, record: Dict[str, Any]) -> None:
        """Append one record; a failed write (disk full) is logged, not raised: only rank 0 writes
        metrics, and a checkpoint save stops every rank with a clear error when the disk is full."""
        try:
            with open(self.metrics_path, "a") as f:
                f.write(strict_json.dumps(record) + "\n")
        except OSError as e:
            log.warning("could not append to %s: %s (record lost: %s)", self.metrics_path, e, record)

    def step(self, step: int, epoch: int, loss: float, lr: float, images: Optional[int] = None) -> None:
        """Report the finished step `step` (1-based count of done steps); images: trained so far."""
        if not self.active:
            return
        now = time.time()
        ips = (step - self._last_step) * self.global_batch / max(now - self._last_t, 1e-9)
        rate = (step - self._s0) / max(now - self._t0, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        self._last_t, self._last_step = now, step
        record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": ips}
        if images is not None:
            record["images"] = images
        self._append(record)
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, step)
            self._writer.add_scalar("train/lr", lr, step)
            self._writer.add_scalar("train/images_per_s", ips, step)
        line = (f"step {step}/{self.total_steps} epoch {epoch} loss {loss:.4f} lr {lr:.5f} "
                f"{ips:.1f} img/s ETA {format_eta(eta)}")
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.5f}")
        log.info(line)

    def skipped(self, step: int, epoch: int, what: str, total: int) -> None:
        """Record that step `step` was skipped (what: why); total: skipped steps of the run so far."""
        if not self.active:
            return
        self._append({"step": step, "epoch": epoch, "skipped": what, "skipped_total": total})
        if self._writer is not None:
            self._writer.add_scalar("train/skipped_nonfinite", total, step)

    def verification(self, step: int, name: str, accuracy: float, std: float, best: float) -> None:
        if not self.active:
            return
        self._append({"step": step, "eval": name, "accuracy": accuracy, "std": std, "best": best})
        if self._writer is not None:
            self._writer.add_scalar(f"verification/{name}", accuracy, step)
        log.info("step %d verification %s: accuracy %.4f ± %.4f (best %.4f)", step, name, accuracy, std, best)

    def close(self, plot_path: Optional[Path] = None) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if plot_path is not None:
            plot_curves(self.metrics_path, plot_path)


def _records(text: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], int]:
    """(line, record) of each metrics line that parses as a JSON object, and how many did not."""
    good, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            good.append((line, record))
        else:
            bad += 1
    return good, bad


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short (a full disk) is left out."""
    return [record for _, record in _records(path.read_text())[0]] if path.exists() else []


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Loss and learning rate against images trained (left, middle; against step for records
    without an image count) and verification accuracy against step (right), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    by_images = bool(train) and all("images" in r for r in train)
    x = [r["images"] if by_images else r["step"] for r in train]
    xlabel = "images trained" if by_images else "step"
    evals: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if "eval" in r:
            evals.setdefault(r["eval"], []).append(r)
    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(x, [r["loss"] for r in train])
    ax_loss.set(xlabel=xlabel, ylabel="loss", title="training loss")
    ax_lr.plot(x, [r["lr"] for r in train])
    ax_lr.set(xlabel=xlabel, ylabel="learning rate", title="learning rate")
    for name, rs in evals.items():
        ax_acc.plot([r["step"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=name)
    ax_acc.set(xlabel="step", ylabel="accuracy", title="verification accuracy (10-fold)")
    if evals:
        ax_acc.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
