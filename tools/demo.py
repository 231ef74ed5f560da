"""The README's main job, end to end on an embedded default, on the CPU.

1. builds a synthetic face-identity dataset (insightface RecordIO layout plus a
   `.bin` of held-out identities) unless it already exists;
2. trains configs/demo.yaml with `horovodrun -np 2` (resumes if a run is there);
3. evaluates the trained model on the held-out identities (10-fold, flip);
4. exports ONNX with an onnxruntime parity check and evaluates the ONNX model too;
5. prints where everything went.

    python tools/demo.py [--out demo_output] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from pfc_mx import checkpoint
from pfc_mx.cli import run_cli
from pfc_mx.errors import PfcError

ROOT = Path(__file__).resolve().parents[1]

# the embedded default dataset: identities seen in training, and held-out ones for the .bin
DEMO_DATA = dict(num_identities=300, images_per_identity=24, holdout_identities=100, num_pairs=600,
                 bin_name="synthetic_val", seed=0)


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def run(cmd: List[str]) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    rc = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if rc != 0:
        raise PfcError(f"command failed with exit {rc}: {' '.join(str(c) for c in cmd)}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "demo_output"), help="where data and results go")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier demo run (keeps the dataset)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    data, run_dir = out / "data", out / "run"
    py = sys.executable
    t_all = time.time()

    t = step("1/4 synthetic dataset")
    if (data / "train.rec").is_file() and (data / f"{DEMO_DATA['bin_name']}.bin").is_file():
        print(f"reusing {data}")
    else:
        from pfc_mx.data.synthetic import generate
        summary = generate(data, **DEMO_DATA)
        print(json.dumps(summary, default=str))
    print(f"({time.time() - t:.0f} s)")

    t = step("2/4 training configs/demo.yaml on 2 ranks")
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    run([Path(py).parent / "horovodrun", "-np", 2, "-H", "localhost:2", "--gloo", py, "train_horovod.py",
         "configs/demo.yaml", "--set", f"data.rec={data}", f"output.dir={run_dir}"])
    print(f"({time.time() - t:.0f} s)")
    latest = checkpoint.resolve(run_dir)

    t = step("3/4 ONNX export with parity check")
    onnx_path = run_dir / "model.onnx"
    run([py, "tools/export_onnx.py", latest, onnx_path])
    print(f"({time.time() - t:.0f} s)")

    t = step("4/4 verification on held-out identities (MXNet checkpoint and ONNX model)")
    bin_path = data / f"{DEMO_DATA['bin_name']}.bin"
    run([py, "tools/eval_verification.py", latest, bin_path])
    run([py, "tools/eval_verification.py", onnx_path, bin_path])
    print(f"({time.time() - t:.0f} s)")

    print(f"\ndemo finished in {time.time() - t_all:.0f} s. Outputs:")
    for what, path in [("dataset", data), ("checkpoints", latest.parent), ("latest", latest),
                       ("ONNX model", onnx_path), ("logs", run_dir / "logs"), ("metrics", run_dir / "metrics.jsonl"),
                       ("curves", run_dir / "curves.png"), ("TensorBoard", run_dir / "tensorboard"),
                       ("resolved config", run_dir / "config.yaml")]:
        print(f"  {what:16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
