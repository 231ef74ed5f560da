"""The resume policy's config comparison (pfc_mx.train.resume.config_changes), on plain config trees."""
from __future__ import annotations

import pytest

from pfc_mx.config import Config, build_config
from pfc_mx.errors import ConfigError
from pfc_mx.train.resume import check_config, config_changes


def test_changes_are_split_into_safe_and_altering_each_named_with_both_values():
    old = Config().to_dict()
    new = build_config({"optim": {"lr": 0.2, "epochs": 30}, "output": {"dir": "/elsewhere", "log_every": 1},
                        "eval": {"every": 10}, "data": {"num_workers": 8, "batch_size": 64},
                        "loss": {"margin": "cosface"}, "seed": 3}).to_dict()
    safe, altering = config_changes(old, new)
    assert altering == ["loss.margin: 'arcface' -> 'cosface'", "optim.epochs: 20 -> 30", "optim.lr: 0.1 -> 0.2",
                        "seed: 0 -> 3"]
    assert safe == ["data.batch_size: 128 -> 64", "data.num_workers: 2 -> 8", "eval.every: 2000 -> 10",
                    "output.dir: 'work_dirs/run' -> '/elsewhere'", "output.log_every: 50 -> 1"]
    assert config_changes(old, old) == ([], [])


def test_a_key_unknown_to_the_checkpoint_stands_for_its_default():
    old = Config().to_dict()
    del old["partial_fc"]["kernels"], old["optim"]["power"]
    assert config_changes(old, Config().to_dict()) == ([], [])
    new = build_config({"partial_fc": {"kernels": "stock"}, "optim": {"power": 1.0}}).to_dict()
    assert config_changes(old, new) == (["partial_fc.kernels: 'auto' -> 'stock'"], ["optim.power: 2.0 -> 1.0"])


def test_check_config_refuses_altering_changes_unless_allowed_and_always_a_new_shape(tmp_path):
    cfg = Config()
    state = {"num_classes": 10, "embedding_size": 512, "model": "iresnet50",
             "config": build_config({"partial_fc": {"sample_rate": 0.1}}).to_dict()}
    with pytest.raises(ConfigError, match=r"changes the run \(partial_fc.sample_rate: 0.1 -> 1.0\)"):
        check_config(cfg, state, tmp_path, 10)
    allowed = build_config({"output": {"allow_changes": True}})
    check_config(allowed, state, tmp_path, 10)
    with pytest.raises(ConfigError, match="it has num_classes = 10, the config has 11"):
        check_config(allowed, state, tmp_path, 11)
    check_config(cfg, {k: v for k, v in state.items() if k != "config"}, tmp_path, 10)  # older checkpoints
