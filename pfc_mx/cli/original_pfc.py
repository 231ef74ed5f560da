"""The original MXNet partial_fc (a user's insightface checkout), driven step by step on the CPU.

    orig = OriginalPFC(path, num_layers=18, num_classes=30, batch_size=32, lr=0.001, seed=0)
    orig.save_backbone("model")          # model-symbol.json + model-0000.params (insightface names)
    loss = orig.step(images, labels)      # one train step exactly as its SampleDistributeModule.fit does
    orig.state()                          # weights, batch-norm statistics, momenta, centers

Nothing of insightface is copied here: its `recognition/partial_fc/mxnet` folder is put on sys.path
and its own modules (default, symbol/resnet, memory_bank, memory_module, memory_softmax, optimizer,
memory_scheduler) build the backbone, MemoryBank, MarginLoss and both optimizers as train_memory.py
does (rate 1, one rank: its Horovod calls run on a size-1 world). Its `mx.gpu(...)` contexts are
mapped to the CPU while it runs; `easydict`, which only its config uses, gets a stand-in when absent.
"""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Callable, Dict, Iterator, Sequence

import mxnet as mx
import numpy as np

from pfc_mx.errors import ConfigError

SUBDIR = Path("recognition") / "partial_fc" / "mxnet"
MODULES = ("default", "symbol", "symbol.resnet", "symbol.symbol_utils", "memory_bank", "memory_module",
           "memory_softmax", "optimizer", "memory_scheduler", "memory_samplers")


def find_code(path: str) -> Path:
    """The partial_fc/mxnet folder of an insightface checkout (or that folder itself); ConfigError if absent."""
    root = Path(path).expanduser().resolve()
    for folder in (root / SUBDIR, root):
        if (folder / "memory_module.py").is_file() and (folder / "symbol" / "resnet.py").is_file():
            return folder
    raise ConfigError(f"--insightface {path}: no {SUBDIR}/memory_module.py there (an insightface checkout "
                      "with the MXNet partial_fc release, e.g. commit 7fadd420)")


@contextlib.contextmanager
def gpu_on_cpu() -> Iterator[None]:
    """mx.gpu(i) → mx.cpu() while the original code runs."""
    gpu = mx.gpu
    mx.gpu = lambda device_id=0: mx.cpu()
    try:
        yield
    finally:
        mx.gpu = gpu


def _easydict_stand_in() -> None:
    try:
        import easydict  # noqa: F401
    except ImportError:
        class EasyDict(dict):
            def __getattr__(self, key):
                try:
                    return self[key]
                except KeyError:
                    raise AttributeError(key) from None

            def __setattr__(self, key, value):
                self[key] = value
        sys.modules["easydict"] = types.SimpleNamespace(EasyDict=EasyDict)


class OriginalPFC:
    """The original's train step on one rank (see the module docstring). ArcFace (s 64, m 0.5),
    momentum 0.9, wd 5e-4 and rescale_grad as train_memory.py sets them; lr constant or lowered at lr_steps."""

    def __init__(self, path: str, num_layers: int, num_classes: int, batch_size: int, lr: float,
                 embedding_size: int = 512, seed: int = 0, perturb: float = 0.0,
                 lr_steps: Sequence[int] = ()) -> None:
        """lr_steps: the updates after which its schedulers multiply the lr by 0.1 (none: constant).
        perturb > 0: multiply the embedding gradient and the centers' gradient of every step by
        1 ± perturb (random signs; 2**-23 is one float32 rounding), the original's own noise floor."""
        code = find_code(path)
        _easydict_stand_in()
        for name in MODULES:          # a second instance re-reads the config
            sys.modules.pop(name, None)
        sys.path.insert(0, str(code))
        try:
            import horovod.mxnet as hvd
            hvd.init()
            import default
            default.generate_config("arcface", "webface", "r100")
            c = default.config
            c.num_layers, c.num_classes, c.batch_size, c.embedding_size = num_layers, num_classes, batch_size, \
                embedding_size
            c.backbone_lr = c.memory_bank_lr = lr
            c.lr_steps = ",".join(str(int(s)) for s in lr_steps) or "1000000"
            c.sample_ratio, c.fp16, c.debug = 1.0, False, 1
            from symbol import resnet
            from memory_bank import MemoryBank
            from memory_module import SampleDistributeModule
            from memory_scheduler import get_scheduler
            from memory_softmax import MarginLoss
            from optimizer import MemoryBankSGDOptimizer
        except ImportError as e:
            raise ConfigError(f"--insightface {path}: its partial_fc code cannot be imported here ({e})") from None
        finally:
            sys.path.remove(str(code))
        self.batch_size = batch_size
        mx.random.seed(seed)
        np.random.seed(seed)
        with gpu_on_cpu():
            self.embedding = resnet.get_symbol()
            group = mx.sym.Group([self.embedding, mx.sym.BlockGrad(mx.sym.Variable("softmax_label"))])
            self.bank = MemoryBank(num_sample=num_classes, num_local=num_classes, rank=0, local_rank=0,
                                   embedding_size=embedding_size, prefix=".", gpu=True)
            backbone_sched, bank_sched = get_scheduler()
            bank_opt = MemoryBankSGDOptimizer(lr_scheduler=bank_sched, rescale_grad=1.0 / batch_size)
            self.module = SampleDistributeModule(symbol=group, fc7_model=MarginLoss((1.0, 0.5, 0.0), 64.0,
                                                                                    embedding_size),
                                                 memory_bank=self.bank, memory_optimizer=bank_opt)
            self.module.bind([("data", (batch_size, 3, 112, 112))], [("softmax_label", (batch_size,))], True)
            self.module.init_params(mx.init.Normal(0.1))
            self.module.init_optimizer(optimizer_params={
                "learning_rate": lr, "momentum": 0.9, "wd": 5e-4, "rescale_grad": 1.0 / batch_size,
                "multi_precision": False, "lr_scheduler": backbone_sched})
        if perturb > 0:
            self._perturb(perturb, seed)

    def _perturb(self, eps: float, seed: int) -> None:
        rng = np.random.default_rng([seed, 23])

        def noisy(x: mx.nd.NDArray) -> mx.nd.NDArray:
            signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
            return x * mx.nd.array(1 + eps * signs, ctx=x.context)

        backward, update = self.backbone.backward, self.module.memory_optimizer.update
        self.backbone.backward = lambda out_grads=None: backward(out_grads=[noisy(g) for g in out_grads])
        self.module.memory_optimizer.update = lambda weight, grad, state, learning_rate: update(
            weight=weight, grad=noisy(grad), state=state, learning_rate=learning_rate)

    @property
    def backbone(self) -> mx.mod.Module:
        return self.module.backbone_module

    def save_backbone(self, prefix: str) -> None:
        """The current backbone as an insightface checkpoint prefix-symbol.json + prefix-0000.params."""
        args, auxs = self.backbone.get_params()
        mx.model.save_checkpoint(prefix, 0, self.embedding, args, auxs)

    def step(self, images: np.ndarray, labels: np.ndarray) -> float:
        """One training step (forward, the head and its center update, backward, backbone update); the loss."""
        batch = mx.io.DataBatch(data=[mx.nd.array(images)], label=[mx.nd.array(labels)])
        with gpu_on_cpu():
            self.module.forward_backward(batch)
            self.module.update()
        return float(self.module.loss_cache.asscalar())

    def embedding_forward(self) -> Callable[[mx.nd.NDArray], mx.nd.NDArray]:
        """A forward function for pfc_mx.evaluation.verification.embed: its backbone in inference mode
        (moving statistics), each batch padded to the bound batch size; (n, 3, 112, 112) → (n, 512)."""
        def forward(x: mx.nd.NDArray) -> mx.nd.NDArray:
            n = x.shape[0]
            if n < self.batch_size:
                x = mx.nd.concat(x, mx.nd.zeros((self.batch_size - n,) + x.shape[1:], dtype=x.dtype), dim=0)
            batch = mx.io.DataBatch(data=[x], label=[mx.nd.zeros((self.batch_size,))])
            with gpu_on_cpu():
                self.backbone.forward(batch, is_train=False)
            return self.backbone.get_outputs()[0][:n]
        return forward

    def state(self, our_names: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
        """{"params": weights and batch-norm statistics by name, "momentum": the backbone optimizer's
        momentum by parameter name (the last step's update: w += momentum), "centers", "centers_momentum"};
        our_names: named as our backbone names them (`_running_` statistics, PReLU `_alpha`)."""
        args, auxs = self.backbone.get_params()
        names = self.backbone._exec_group.param_names
        states = self.backbone._updater.states if self.backbone._updater is not None else {}
        rename = _our_name if our_names else (lambda n: n)
        return {"params": {rename(k): v.asnumpy() for k, v in {**args, **auxs}.items()},
                "momentum": {rename(names[i]): s.asnumpy() for i, s in states.items()},
                "centers": self.bank.weight.asnumpy(), "centers_momentum": self.bank.weight_mom.asnumpy()}


def _our_name(name: str) -> str:
    """The original's parameter name as our Gluon backbone has it."""
    name = name.replace("_moving_", "_running_")
    return name[: -len("_gamma")] + "_alpha" if "relu" in name and name.endswith("_gamma") else name
