"""model.init: a fresh backbone's weights against a NumPy reference of each initialiser's
distribution (N(0, 0.1) as the original MXNet partial_fc; Xavier gaussian, fan out, magnitude 2),
the parameters either leaves alone, the default and the option's check."""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest

from pfc_mx.config import Config, DataConfig, ModelConfig
from pfc_mx.config.files import load_config
from pfc_mx.errors import ConfigError
from pfc_mx.train import build
from tests.ranks import ROOT


def reference_std(init: str, shape) -> float:
    """The standard deviation each initialiser draws a conv or dense weight of `shape` with."""
    if init == "normal":
        return 0.1
    fan_out = shape[0] * int(np.prod(shape[2:]))   # out channels × kernel area
    return math.sqrt(2.0 / fan_out)


@pytest.mark.parametrize("init", ["normal", "xavier"])
def test_each_weight_is_drawn_with_the_initialisers_scale_and_the_rest_as_before(init):
    cfg = Config(model=ModelConfig(name="iresnet_tiny", init=init, embedding_size=32), data=DataConfig(batch_size=2))
    net = build.backbone(cfg, mx.cpu())
    weights = 0
    for name, p in net.collect_params().items():
        v = p.data().asnumpy().astype(np.float64)
        if name.endswith("_weight"):
            std, n = reference_std(init, v.shape), v.size
            # the sample sd is within 5 of its own standard errors (σ/√(2n)) of σ, the mean within 5 σ/√n of 0
            assert abs(v.std() - std) <= 5 * std / math.sqrt(2 * n), (name, v.std(), std)
            assert abs(v.mean()) <= 5 * std / math.sqrt(n), name
            weights += 1
        elif name.endswith("_alpha"):
            assert np.all(v == 0.25), name
        elif name.endswith(("_gamma", "_running_var")):
            assert np.all(v == 1), name
        else:   # biases, betas, running means
            assert name.endswith(("_bias", "_beta", "_running_mean")) and np.all(v == 0), name
    assert weights >= 10


def test_the_two_initialisers_differ_where_their_scales_do():
    shape = (64, 64, 3, 3)
    assert reference_std("xavier", shape) == pytest.approx(0.0589, abs=1e-4)   # vs the original's 0.1
    nets = {i: build.backbone(Config(model=ModelConfig(name="iresnet_tiny", init=i, embedding_size=32),
                                     data=DataConfig(batch_size=2)), mx.cpu()) for i in ("normal", "xavier")}
    first = {i: n.collect_params()["conv0_weight"].data().asnumpy() for i, n in nets.items()}
    assert first["normal"].shape == first["xavier"].shape and not np.allclose(first["normal"], first["xavier"])


def test_the_default_is_xavier_and_another_value_is_one_line():
    assert Config().model.init == "xavier"
    assert load_config(ROOT / "configs" / "base.yaml").model.init == "xavier"
    assert load_config(ROOT / "configs" / "base.yaml", ["model.init=normal"]).model.init == "normal"
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "base.yaml", ["model.init=uniform"])
    assert "model.init" in str(e.value) and "'xavier' or 'normal'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        build.initializer("uniform")
