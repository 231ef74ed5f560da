"""tools/model_info.py: parameter counts equal insightface's reference backbones; MACs by hand."""
from __future__ import annotations

import mxnet as mx
import pytest

from pfc_mx.cli import run_cli
from pfc_mx.cli.model_info import graph_macs, main, model_stats

# Reference counts of insightface arcface_torch (recognition/arcface_torch/backbones/iresnet.py and
# mobilefacenet.py, embedding 512), worked out by arithmetic from those definitions, layer by layer:
# conv/linear weights, the fc bias, BatchNorm weight + bias (including the frozen `features.weight`)
# and PReLU slopes, i.e. sum(p.numel() for p in model.parameters()); BN running statistics are
# buffers there and are not counted here either. E.g. iresnet50 =
#   stem 3·64·9 + 2·64 + 64
#   + Σ units (2·C_in + 9·C_in·C + 2·C + C + 9·C² + 2·C  [+ C_in·C + 2·C in the first unit of a stage])
#   + bn2 2·512 + fc 512·7·7·512 + 512 + features 2·512.
ARCFACE_TORCH_PARAMS = {
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
    "mobilefacenet": 2_059_520,      # get_mbf(fp16, 512): blocks (1, 4, 6, 2), scale 2
}


@pytest.mark.parametrize("name", sorted(ARCFACE_TORCH_PARAMS))
def test_parameter_count_equals_arcface_torch_reference(name):
    stats = model_stats(name, embedding_size=512)
    assert stats["params"] == ARCFACE_TORCH_PARAMS[name]
    assert stats["output"] == (1, 512)


def test_fixed_gamma_is_counted_but_not_trainable():
    stats = model_stats("iresnet_tiny", embedding_size=128)
    assert stats["params"] - stats["trainable"] == 128        # fc1_gamma


def test_macs_of_a_conv_and_a_dense_layer_match_a_hand_count():
    x = mx.sym.Convolution(mx.sym.var("data"), num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                           num_group=2, no_bias=True, name="c")
    y = mx.sym.FullyConnected(x, num_hidden=10, name="f")
    arg_shapes, _, _ = y.infer_shape(data=(1, 4, 16, 16))
    internals = y.get_internals()
    outputs = dict(zip(internals.list_outputs(), internals.infer_shape(data=(1, 4, 16, 16))[1]))
    conv = 8 * (4 // 2) * 3 * 3 * (8 * 8)     # out channels · in channels per group · kernel · positions
    dense = 10 * (8 * 8 * 8)
    assert graph_macs(y, dict(zip(y.list_arguments(), arg_shapes)), outputs) == conv + dense


def test_iresnet_macs_equal_a_layer_by_layer_hand_count():
    # stem 64·3·9·112² + Σ units (C_in·C·9·H_in² + C²·9·H_out² [+ C_in·C·H_out² in a stage's first unit])
    # + fc 512·7·7·512, with H halving in each stage's first unit (112 → 56 → 28 → 14 → 7)
    assert model_stats("iresnet50")["macs"] == 6_309_330_944
    assert model_stats("iresnet100")["macs"] == 12_089_606_144


def test_cli_prints_one_table_and_rejects_unknown_models(capsys):
    assert main(["--models", "iresnet_tiny,mobilefacenet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("$ python tools/model_info.py")
    assert [line.split("|")[1].strip() for line in lines[3:]] == ["iresnet_tiny", "mobilefacenet"]
    assert run_cli(main, ["--models", "resnet9000"]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
