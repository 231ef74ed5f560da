"""Training configuration: YAML with `_base_` inheritance, `--set a.b=c` overrides, a strict schema.

Usage::

    cfg = load_config("configs/ms1mv3_r50.yaml", overrides=["optim.lr=0.2"])
    cfg.optim.lr, cfg.data.batch_size, cfg.partial_fc.sample_rate

`load_config` returns an immutable `Config` (frozen dataclasses, one per
section). Unknown keys are rejected with the closest valid key suggested;
types and ranges are checked; relative paths are resolved against the folder
of the YAML file that set them (overrides: against the working directory).

Learning-rate convention: `optim.lr` is the rate for the global batch
`data.batch_size × world_size` with gradients averaged over that global batch
(the arcface_torch convention: lr 0.1 for 8 GPUs × 128). When
`optim.reference_batch` is set (> 0) the rate is scaled linearly,
lr × global_batch / reference_batch, so a recipe keeps its meaning on fewer GPUs.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union, get_args, get_origin, get_type_hints

import yaml

from pfc_mx.errors import ConfigError
from pfc_mx.head.options import RULES as HEAD_RULES
from pfc_mx.margin import get_margin, margin_problem


@dataclass(frozen=True)
class ModelConfig:
    name: str = "iresnet50"
    embedding_size: int = 512
    dropout: float = 0.0
    bn_mom: float = 0.9
    bn_eps: float = 2e-5
    fp16: bool = False
    pretrained: str = ""  # fine-tune from: legacy `prefix,epoch` or our checkpoint (pfc_mx/train/pretrained.py)


@dataclass(frozen=True)
class LossConfig:
    margin: Union[str, List[float]] = "arcface"  # preset name or [m1, m2, m3]
    scale: float = 64.0
    interclass_filtering_threshold: float = 0.0

    @property
    def margins(self) -> Tuple[float, float, float]:
        """(m1, m2, m3) after resolving a preset name (pfc_mx.margin.get_margin)."""
        return get_margin(self.margin)


@dataclass(frozen=True)
class PartialFCConfig:
    sample_rate: float = 1.0
    centers_on: str = "device"  # "device" or "host"
    kernels: str = "auto"       # "auto" (fused on CPU), "fused" or "stock": see pfc_mx.head


@dataclass(frozen=True)
class DataConfig:
    rec: str = ""  # folder with train.rec/train.idx/property, or a .rec path
    num_classes: int = 0  # 0: read from `property` / the labels
    batch_size: int = 128  # per rank
    num_workers: int = 2
    mirror: bool = True
    color_jitter: float = 0.0
    max_corrupt_fraction: float = 0.02  # of the images a rank reads in one epoch; more stops the run
    on_wrong_size: str = "resize"  # images not 112x112x3: "resize" (counted), "skip" (counted) or "error"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1
    reference_batch: int = 0  # 0: use lr as given; > 0: scale lr by global_batch / reference_batch
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 20
    max_steps: int = 0  # 0: epochs × batches per epoch; > 0: stop after this many steps
    schedule: str = "poly"  # "poly" (arcface_torch) or "multistep" (original MXNet recipe)
    power: float = 2.0  # poly decay power
    warmup_epochs: float = 0.0
    milestones: List[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1  # multistep factor
    grad_clip: float = 0.0  # global L2 norm clip of backbone gradients; 0 disables
    skip_nonfinite: int = 0  # steps with a non-finite loss or gradient skipped (on every rank) before stopping


@dataclass(frozen=True)
class EvalConfig:
    targets: List[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30"])
    every: int = 2000  # steps; 0: only at the end
    batch_size: int = 64
    flip: bool = True


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "work_dirs/run"
    checkpoint_every: int = 2000  # steps
    keep: int = 3  # newest complete checkpoints kept
    resume: str = "auto"  # "auto", "none", or a checkpoint directory
    allow_changes: bool = False  # resume even when the config changes the run (data, model, loss, schedule)
    log_every: int = 50  # steps
    tensorboard: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the resolved config (recorded in checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_PATH_KEYS = {("data", "rec"), ("output", "dir"), ("model", "pretrained")}


# ---- range checks: (section, key) -> (predicate, description) -------------------
def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


_CHECKS: Dict[Tuple[str, str], Tuple[Any, str]] = {
    ("model", "embedding_size"): (_positive, "> 0"),
    ("model", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "bn_mom"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "bn_eps"): (_positive, "> 0"),
    ("loss", "scale"): HEAD_RULES["scale"],
    ("loss", "interclass_filtering_threshold"): (HEAD_RULES["interclass_filtering_threshold"][0],
                                                 HEAD_RULES["interclass_filtering_threshold"][1] + " (0 disables)"),
    ("partial_fc", "sample_rate"): HEAD_RULES["sample_rate"],
    ("partial_fc", "centers_on"): HEAD_RULES["centers_on"],
    ("partial_fc", "kernels"): HEAD_RULES["kernels"],
    ("data", "num_classes"): (_non_negative, ">= 0"),
    ("data", "batch_size"): (_positive, "> 0"),
    ("data", "num_workers"): (_non_negative, ">= 0"),
    ("data", "color_jitter"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data", "max_corrupt_fraction"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data", "on_wrong_size"): (lambda v: v in ("resize", "skip", "error"), "'resize', 'skip' or 'error'"),
    ("optim", "lr"): (_positive, "> 0"),
    ("optim", "reference_batch"): (_non_negative, ">= 0"),
    ("optim", "momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim", "weight_decay"): (_non_negative, ">= 0"),
    ("optim", "epochs"): (_positive, "> 0"),
    ("optim", "max_steps"): (_non_negative, ">= 0"),
    ("optim", "schedule"): (lambda v: v in ("poly", "multistep"), "'poly' or 'multistep'"),
    ("optim", "power"): (_positive, "> 0"),
    ("optim", "warmup_epochs"): (_non_negative, ">= 0"),
    ("optim", "gamma"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim", "grad_clip"): (_non_negative, ">= 0 (0 disables)"),
    ("optim", "skip_nonfinite"): (_non_negative, ">= 0 (0: stop at the first non-finite step)"),
    ("eval", "every"): (_non_negative, ">= 0"),
    ("eval", "batch_size"): (_positive, "> 0"),
    ("output", "checkpoint_every"): (_positive, "> 0"),
    ("output", "keep"): (_positive, ">= 1"),
    ("output", "log_every"): (_positive, "> 0"),
}


def _suggest(key: str, valid: List[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check value against a type hint (int, float, bool, str, List[...], Union[...])."""
    origin = get_origin(hint)
    if origin is Union:
        for option in get_args(hint):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported type hint {hint}")  # a bug in the schema, not user input


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read one YAML file with its `_base_` chain merged in; paths made absolute."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `_base_` cycle through {' -> '.join(p.name for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    bases = raw.pop("_base_", [])
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    for section, keys in raw.items():
        if isinstance(keys, dict):
            for key in list(keys):
                if (section, key) in _PATH_KEYS and isinstance(keys[key], str) and keys[key]:
                    keys[key] = str((path.parent / keys[key]).resolve())
                elif (section, key) == ("eval", "targets"):
                    keys[key] = _target_paths(keys[key], path.parent)
    _deep_merge(merged, raw)
    return merged


def _target_paths(targets: Any, base: Path) -> Any:
    """eval.targets with its paths (not bare names like 'lfw') made absolute against base."""
    if not isinstance(targets, list):
        return targets
    return [str((base / t).resolve()) if isinstance(t, str) and ("/" in t or t.endswith(".bin")) else t
            for t in targets]


def _deep_merge(into: Dict[str, Any], other: Dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


def _apply_override(tree: Dict[str, Any], text: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, value_text = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) not in (1, 2) or not all(parts):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    if tuple(parts) in _PATH_KEYS and isinstance(value, str) and value:
        value = str(Path(value).resolve())
    elif tuple(parts) == ("eval", "targets"):
        value = _target_paths(value, Path.cwd())
    if len(parts) == 1:
        tree[parts[0]] = value
    else:
        section = tree.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {text!r}: {parts[0]} is not a section")
        section[parts[1]] = value


def build_config(tree: Dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict tree into a Config; raises ConfigError naming the bad key."""
    sections = {f.name: f for f in fields(Config)}
    values: Dict[str, Any] = {}
    for name, value in tree.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown key '{name}'{_suggest(name, list(sections))}")
        hint = get_type_hints(Config)[name]
        if not dataclasses.is_dataclass(hint):
            values[name] = _coerce(value, hint, f"{source}: {name}")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping")
        hints = get_type_hints(hint)
        kw = {}
        for key, v in value.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{name}.{key}'{_suggest(key, list(hints))}")
            v = _coerce(v, hints[key], f"{source}: {name}.{key}")
            check = _CHECKS.get((name, key))
            if check and not check[0](v):
                raise ConfigError(f"{source}: {name}.{key} = {v!r} must be {check[1]}")
            kw[key] = v
        values[name] = hint(**kw)
    cfg = Config(**values)
    _check_cross(cfg, source)
    return cfg


def _check_cross(cfg: Config, source: str) -> None:
    problem = margin_problem(cfg.loss.margin)  # the presets and bounds live in pfc_mx.margin
    if problem:
        raise ConfigError(f"{source}: loss.margin = {cfg.loss.margin!r}: {problem}")
    if cfg.optim.schedule == "multistep" and not cfg.optim.milestones:
        raise ConfigError(f"{source}: optim.schedule = multistep needs optim.milestones (epochs)")
    if sorted(cfg.optim.milestones) != list(cfg.optim.milestones):
        raise ConfigError(f"{source}: optim.milestones must be increasing, got {cfg.optim.milestones}")
    if cfg.optim.warmup_epochs >= cfg.optim.epochs:
        raise ConfigError(f"{source}: optim.warmup_epochs ({cfg.optim.warmup_epochs}) must be < optim.epochs")


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML config (with its `_base_` chain), apply `section.key=value` overrides, validate."""
    tree = _read_yaml(Path(path))
    for text in overrides or []:
        _apply_override(tree, text)
    return build_config(tree, source=str(path))


def check_data_paths(cfg: Config) -> None:
    """Fail fast, before ranks do heavy work, when the training data is not where the config says."""
    if not cfg.data.rec:
        raise ConfigError("data.rec is not set: give the dataset folder (train.rec, train.idx, property)")
    rec = Path(cfg.data.rec)
    rec_file = rec / "train.rec" if rec.is_dir() else rec
    if not rec_file.is_file():
        raise ConfigError(f"data.rec: {rec_file} does not exist")
    if not rec_file.with_suffix(".idx").is_file():
        raise ConfigError(f"data.rec: index {rec_file.with_suffix('.idx')} is missing")
    from pfc_mx.data.verification_bin import find_bins
    find_bins(cfg.eval.targets, rec_file.parent, what="eval.targets")


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (loadable again with load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
