"""What values the configuration accepts: one range per key, and the rules between keys.

RANGES maps (section, key) to (predicate, what it must be); the head's option values, the data's
and the margin presets come from their owners (pfc_mx.head.options, pfc_mx.data.options,
pfc_mx.margin_rules), never restated here.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from pfc_mx.config.schema import MODEL_INITS, Config
from pfc_mx.data.options import WRONG_SIZE_POLICIES
from pfc_mx.errors import ConfigError
from pfc_mx.head.options import RULES as HEAD_RULES, one_of
from pfc_mx.margin_rules import margin_problem
from pfc_mx.weight_decay import WD_RULES


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


RANGES: Dict[Tuple[str, str], Tuple[Any, str]] = {
    ("model", "embedding_size"): (_positive, "> 0"),
    ("model", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "bn_mom"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "bn_eps"): (_positive, "> 0"),
    ("model", "init"): (lambda v: v in MODEL_INITS, one_of(MODEL_INITS)),
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
    ("data", "on_wrong_size"): (lambda v: v in WRONG_SIZE_POLICIES, one_of(WRONG_SIZE_POLICIES)),
    ("optim", "lr"): (_positive, "> 0"),
    ("optim", "reference_batch"): (_non_negative, ">= 0"),
    ("optim", "momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim", "weight_decay"): (_non_negative, ">= 0"),
    ("optim", "wd_rule"): (lambda v: v in WD_RULES, one_of(WD_RULES)),
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


def check_cross(cfg: Config, source: str) -> None:
    """Raise ConfigError for keys that are valid alone but not together (margin, schedule, warm-up, kernels)."""
    problem = margin_problem(cfg.loss.margin)  # the presets and bounds live in pfc_mx.margin_rules
    if problem:
        raise ConfigError(f"{source}: loss.margin = {cfg.loss.margin!r}: {problem}")
    if cfg.optim.schedule == "multistep" and not cfg.optim.milestones:
        raise ConfigError(f"{source}: optim.schedule = multistep needs optim.milestones (epochs)")
    if sorted(cfg.optim.milestones) != list(cfg.optim.milestones):
        raise ConfigError(f"{source}: optim.milestones must be increasing, got {cfg.optim.milestones}")
    if cfg.optim.warmup_epochs >= cfg.optim.epochs:
        raise ConfigError(f"{source}: optim.warmup_epochs ({cfg.optim.warmup_epochs}) must be < optim.epochs")
    if cfg.partial_fc.kernels == "original" and cfg.loss.interclass_filtering_threshold > 0:
        raise ConfigError(f"{source}: partial_fc.kernels = original replays insightface's MXNet partial_fc, which has "
                          "no inter-class filtering: set loss.interclass_filtering_threshold to 0 or partial_fc.kernels "
                          "to another value")
