"""Write the legacy insightface symbol fixtures of this folder (run from the repository root).

    python tests/data/legacy/make_fixtures.py

Each symbol is written here with mx.sym after insightface's recognition definitions (fresnet.py
with unit v3, input v1 and output "E"; fmobilefacenet.py as of April 2018 with its "GDC"
output), then saved in the JSON form of the MXNet version that wrote the published models:

  r34-symbol.json       MXNet 0.12 (mxnet_version 1200): node attributes under "attr"
  r100-symbol.json      MXNet 1.4 (10400): "attrs"; the full r100 (units 3, 13, 30, 3)
  r100s-symbol.json     the same form and layer names with fewer units (1, 2, 2, 1), for tests
                        that need weights
  y1-symbol.json        MXNet 1.0 (10000): "attrs"; MobileFaceNet "y1", 128-d, the pre_fc1
                        weight called fc1_weight with __shape__/__lr_mult__/__wd_mult__

What they share with the originals: only the attributes the Python code passed are present
(no `flatten` on FullyConnected, no `eps` on fmobilefacenet's BatchNorms, so MXNet's defaults
apply), auto-created variables carry their operator's attributes, the input nodes are `id`
(fresnet only), `_minusscalar0` and `_mulscalar0`, and the output is `fc1`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import mxnet as mx

HERE = Path(__file__).resolve().parent
BN_MOM = 0.9


def _prelu(x, name):
    return mx.sym.LeakyReLU(data=x, act_type="prelu", name=name)


def fresnet(units: Sequence[int], emb: int = 512) -> mx.sym.Symbol:
    """insightface fresnet: IR units (v3), input v1 (identity, -127.5, *0.0078125), output E."""
    filters = (64, 64, 128, 256, 512)
    data = mx.sym.identity(data=mx.sym.Variable("data"), name="id")
    data = (data - 127.5) * 0.0078125
    body = mx.sym.Convolution(data=data, num_filter=filters[0], kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                              no_bias=True, name="conv0", workspace=256)
    body = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=2e-5, momentum=BN_MOM, name="bn0")
    body = _prelu(body, "relu0")
    for i, n in enumerate(units):
        for j in range(n):
            name, stride, c = f"stage{i + 1}_unit{j + 1}", (2, 2) if j == 0 else (1, 1), filters[i + 1]
            bn1 = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=2e-5, momentum=BN_MOM, name=name + "_bn1")
            conv1 = mx.sym.Convolution(data=bn1, num_filter=c, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                       no_bias=True, workspace=256, name=name + "_conv1")
            bn2 = mx.sym.BatchNorm(data=conv1, fix_gamma=False, eps=2e-5, momentum=BN_MOM, name=name + "_bn2")
            act1 = _prelu(bn2, name + "_relu1")
            conv2 = mx.sym.Convolution(data=act1, num_filter=c, kernel=(3, 3), stride=stride, pad=(1, 1),
                                       no_bias=True, workspace=256, name=name + "_conv2")
            bn3 = mx.sym.BatchNorm(data=conv2, fix_gamma=False, eps=2e-5, momentum=BN_MOM, name=name + "_bn3")
            if j == 0:
                sc = mx.sym.Convolution(data=body, num_filter=c, kernel=(1, 1), stride=stride, no_bias=True,
                                        workspace=256, name=name + "_conv1sc")
                shortcut = mx.sym.BatchNorm(data=sc, fix_gamma=False, momentum=BN_MOM, eps=2e-5, name=name + "_sc")
            else:
                shortcut = body
            body = bn3 + shortcut
    body = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=2e-5, momentum=BN_MOM, name="bn1")
    body = mx.sym.Dropout(data=body, p=0.4)
    fc1 = mx.sym.FullyConnected(data=body, num_hidden=emb, name="pre_fc1")
    return mx.sym.BatchNorm(data=fc1, fix_gamma=True, eps=2e-5, momentum=BN_MOM, name="fc1")


def _conv(x, c, kernel, stride, pad, group, name, act=True):
    x = mx.sym.Convolution(data=x, num_filter=c, kernel=kernel, num_group=group, stride=stride, pad=pad,
                           no_bias=True, name=f"{name}_conv2d")
    x = mx.sym.BatchNorm(data=x, name=f"{name}_batchnorm", fix_gamma=False, momentum=BN_MOM)
    return _prelu(x, f"{name}_relu") if act else x


def _depthwise(x, out, stride, group, name):
    x = _conv(x, group, (1, 1), (1, 1), (0, 0), 1, f"{name}_conv_sep")
    x = _conv(x, group, (3, 3), stride, (1, 1), group, f"{name}_conv_dw")
    return _conv(x, out, (1, 1), (1, 1), (0, 0), 1, f"{name}_conv_proj", act=False)


def _residual(x, blocks, out, group, name):
    for i in range(blocks):
        x = _depthwise(x, out, (1, 1), group, f"{name}_block{i}") + x
    return x


def fmobilefacenet(emb: int = 128, wd_mult: float = 10.0) -> mx.sym.Symbol:
    """insightface fmobilefacenet ("y1", blocks 1, 4, 6, 2) with its April 2018 GDC output."""
    data = mx.sym.Variable(name="data")
    data = (data - 127.5) * 0.0078125
    x = _conv(data, 64, (3, 3), (2, 2), (1, 1), 1, "conv_1")
    x = _conv(x, 64, (3, 3), (1, 1), (1, 1), 64, "conv_2_dw")
    x = _residual(_depthwise(x, 64, (2, 2), 128, "dconv_23"), 4, 64, 128, "res_3")
    x = _residual(_depthwise(x, 128, (2, 2), 256, "dconv_34"), 6, 128, 256, "res_4")
    x = _residual(_depthwise(x, 128, (2, 2), 512, "dconv_45"), 2, 128, 256, "res_5")
    x = _conv(x, 512, (1, 1), (1, 1), (0, 0), 1, "conv_6sep")
    x = _conv(x, 512, (7, 7), (1, 1), (0, 0), 512, "conv_6dw7_7", act=False)
    weight = mx.sym.Variable("fc1_weight", shape=(emb, 512), lr_mult=1.0, wd_mult=wd_mult)
    x = mx.sym.FullyConnected(data=x, weight=weight, num_hidden=emb, name="pre_fc1")
    return mx.sym.BatchNorm(data=x, fix_gamma=True, eps=2e-5, momentum=BN_MOM, name="fc1")


def old_json(sym: mx.sym.Symbol, version: int, node_key: str) -> str:
    """sym's JSON as MXNet `version` (e.g. 1200 for 0.12) wrote it: node attributes under node_key.

    Works on the text that MXNet 1.9.1 writes (the same writer and layout as the old versions).
    """
    text = sym.tojson()
    body, tail = text.rsplit('"attrs": {"mxnet_version"', 1)
    if node_key != "attrs":
        body = re.sub(r'^(\s+)"attrs": \{', lambda m: f'{m.group(1)}"{node_key}": {{', body, flags=re.M)
    tail = re.sub(r'\["int", \d+\]', f'["int", {version}]', tail, count=1)
    text = body + '"attrs": {"mxnet_version"' + tail
    assert json.loads(text)["attrs"]["mxnet_version"] == ["int", version]
    return text


def main() -> None:
    fixtures = {
        "r34": (lambda: fresnet((3, 4, 6, 3)), 1200, "attr"),
        "r100": (lambda: fresnet((3, 13, 30, 3)), 10400, "attrs"),
        "r100s": (lambda: fresnet((1, 2, 2, 1)), 10400, "attrs"),
        "y1": (fmobilefacenet, 10000, "attrs"),
    }
    for name, (build, version, key) in fixtures.items():
        with mx.name.NameManager():          # a fresh process's names: _minusscalar0, _plus0, dropout0
            sym = build()
        (HERE / f"{name}-symbol.json").write_text(old_json(sym, version, key) + "\n")


if __name__ == "__main__":
    main()
