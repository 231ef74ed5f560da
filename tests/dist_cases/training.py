"""Cases for the training loop's checkpoints: reload centers on any world size."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from pfc_mx import checkpoint
from pfc_mx.head import PartialFC
from tests.dist_cases import case


@case
def reload_centers(outdir: Path, data: str, out: str) -> Dict[str, np.ndarray]:
    """Load the newest checkpoint of `out` into this rank's PartialFC shard."""
    found = checkpoint.find_resumable(Path(out) / "checkpoints")
    state = found.state
    pfc = PartialFC(state["num_classes"], state["embedding_size"])
    w, m = checkpoint.load_centers(found.path, pfc.class_start, pfc.num_local, state["embedding_size"])
    return {"weight": w, "momentum": m, "start": np.array(pfc.class_start)}
