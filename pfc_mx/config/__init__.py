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

Modules: schema (sections, keys, defaults), rules (ranges and cross-key rules), validate
(a dict tree into a Config), files (YAML, `_base_`, overrides, paths, save).
"""
from pfc_mx.config.files import PATH_KEYS, check_data_paths, load_config, save_config
from pfc_mx.config.schema import (Config, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig,
                                  OutputConfig, PartialFCConfig)
from pfc_mx.config.validate import build_config

__all__ = ["Config", "ModelConfig", "LossConfig", "PartialFCConfig", "DataConfig", "OptimConfig", "EvalConfig",
           "OutputConfig", "build_config", "load_config", "save_config", "check_data_paths", "PATH_KEYS"]
