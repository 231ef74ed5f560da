"""Our side of compare_original: a Run on a small synthetic set, started from the original's weights.

    ours = Ours(work, data, prefix, num_layers=18, batch=32, lr=0.001, seed=0, kernels="auto")
    loss = ours.step(1, images, labels)       # one Run.train_step
    ours.set_state(original_state)            # weights, statistics, momenta and centers from the original's

Shared by the step tables (pfc_mx.cli.compare_original) and the seeds mode (pfc_mx.cli.compare_seeds).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np


def original_name(ours: str) -> str:
    """The original's name of our parameter or statistic `ours` (its symbol's names, moving statistics)."""
    from pfc_mx.weight_decay import mxnet_name
    return mxnet_name(ours).replace("_running_", "_moving_")


class Ours:
    """Our Run on the synthetic set, started from the original's checkpoint and centers."""

    def __init__(self, work: Path, data: Path, prefix: Optional[str], num_layers: int, batch: int, lr: float,
                 seed: int, kernels: str, init: str = "xavier") -> None:
        """prefix: the original's checkpoint to start from (None: our own seeded model.init `init`)."""
        from pfc_mx.config import load_config
        from pfc_mx.train.injection import Injection
        from pfc_mx.train.loop import Run
        root = Path(__file__).resolve().parents[2]
        out = work / "run"
        out.mkdir(parents=True, exist_ok=True)
        cfg = load_config(root / "configs" / "base.yaml", [
            f"model.name=iresnet{num_layers}", f"data.rec={data}",
            f"data.batch_size={batch}", "data.num_workers=0", "data.mirror=false", f"optim.lr={lr}",
            "optim.momentum=0.9", "optim.weight_decay=5.0e-4", "optim.wd_rule=all", "optim.schedule=multistep",
            "optim.milestones=[1000000]", "optim.epochs=2000000", "eval.every=0", "eval.targets=[]",
            f"output.dir={out}", "output.tensorboard=false", "output.resume=none", f"seed={seed}",
            f"partial_fc.kernels={kernels}", f"model.init={init}"]
            + ([f"model.pretrained={prefix},0"] if prefix else []))
        self.run, self.lr = Run(cfg, out, Injection()), lr

    def batches(self):
        epoch = 0
        while True:
            yield from self.run.loader.epoch(epoch)
            epoch += 1

    def step(self, step: int, images: np.ndarray, labels: np.ndarray, lr: Optional[float] = None) -> float:
        """One Run.train_step at lr (default: the constant lr given); the loss."""
        loss, fault = self.run.train_step(step, images, labels, self.lr if lr is None else lr)
        return loss

    def _momenta(self):
        t = self.run.trainer
        return {t._params[i].name: s for i, s in t._updaters[0].states.items() if s is not None}

    def state(self) -> Dict:
        _, weight, momentum = self.run.pfc.get_shard()
        return {"params": {k: p.data().asnumpy() for k, p in self.run.net.collect_params().items()},
                "momentum": {k: s.asnumpy() for k, s in self._momenta().items()},
                "centers": weight, "centers_momentum": momentum}

    def set_state(self, original: Dict) -> None:
        """Weights, batch-norm statistics, momenta and centers from the original's state."""
        import mxnet as mx
        for name, p in self.run.net.collect_params().items():
            p.set_data(mx.nd.array(original["params"][original_name(name)]))
        for name, s in self._momenta().items():
            s[:] = original["momentum"][original_name(name)]
        self.run.pfc.set_rows(0, original["centers"], original["centers_momentum"])
