"""The README's main job: the most complete real path of pfc_mx on an embedded default.

At this stage of the project it checks the distributed foundation for real:
two ranks under horovodrun all-gather and all-reduce NDArrays through
pfc_mx.dist and the result is verified. Training, evaluation and ONNX export
join this command as they land.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANK_SCRIPT = """
import mxnet as mx
from pfc_mx import dist
dist.init()
x = mx.nd.full((2, 3), dist.rank() + 1)
total = dist.allreduce(x, op='sum').asnumpy()
gathered = dist.allgather(x).asnumpy()
assert dist.size() == 2 and (total == 3).all() and gathered.shape == (4, 3), (total, gathered)
print(f'rank {dist.rank()} of {dist.size()}: allreduce and allgather verified')
"""


def main(argv=None) -> int:
    horovodrun = Path(sys.executable).parent / "horovodrun"
    cmd = [str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-c", RANK_SCRIPT]
    print("demo: launching 2 ranks:", " ".join(cmd[:6]), "python -c <collective check>")
    rc = subprocess.call(cmd, cwd=ROOT)
    print("demo: distributed check", "passed" if rc == 0 else f"FAILED (exit {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
