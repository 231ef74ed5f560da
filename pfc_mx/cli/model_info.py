"""Parameter count and FLOPs of the backbones at 112×112, as one table.

    python tools/model_info.py [--models iresnet50,mobilefacenet] [--embedding-size 512] [--size 112]

Conventions: `params` counts every learnable tensor, including BatchNorm gamma/beta, PReLU
slopes and the fixed gamma of `fc1` (like PyTorch's `sum(p.numel() for p in model.parameters())`);
BatchNorm running mean/var (auxiliary states, buffers in PyTorch) are not counted, and shown
apart. `trainable` leaves out tensors with grad_req 'null' (the fixed gamma). FLOPs are
multiply-accumulates (MACs) of one 112×112 image through convolution and fully connected
layers only (weights · output positions; biases, BatchNorm, PReLU and additions not counted).
Everything comes from symbolic shape inference: no weights are allocated.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np

import symbols
from pfc_mx.cli import ArgumentParser, int_at_least, positive_int, run_cli
from pfc_mx.errors import ModelError


def model_stats(name: str, size: int = 112, embedding_size: int = 512) -> Dict[str, object]:
    """{'params', 'trainable', 'aux', 'macs', 'output'} of get_model(name) for one size×size image."""
    net = symbols.get_model(name, embedding_size=embedding_size)
    sym = net(mx.sym.var("data"))
    data_shape = (1, 3, size, size)
    try:
        arg_shapes, out_shapes, aux_shapes = sym.infer_shape(data=data_shape)
    except mx.base.MXNetError as e:
        raise ModelError(f"model '{name}' does not take {size}×{size} input: {str(e).splitlines()[0]}") from None
    shapes = dict(zip(sym.list_arguments(), arg_shapes))
    grad_req = {n: p.grad_req for n, p in net.collect_params().items()}
    params = {n: int(np.prod(s)) for n, s in shapes.items() if n != "data"}
    internals = sym.get_internals()
    _, node_shapes, _ = internals.infer_shape(data=data_shape)
    outputs = dict(zip(internals.list_outputs(), node_shapes))
    return {"params": sum(params.values()),
            "trainable": sum(v for n, v in params.items() if grad_req.get(n, "write") != "null"),
            "aux": sum(int(np.prod(s)) for s in aux_shapes),
            "macs": graph_macs(sym, shapes, outputs),
            "output": tuple(out_shapes[0])}


def graph_macs(sym: mx.sym.Symbol, shapes: Dict[str, tuple], outputs: Dict[str, tuple]) -> int:
    """Multiply-accumulates of the Convolution and FullyConnected nodes of sym (batch 1)."""
    nodes = json.loads(sym.tojson())["nodes"]
    total = 0
    for node in nodes:
        if node["op"] not in ("Convolution", "FullyConnected"):
            continue
        weight = nodes[node["inputs"][1][0]]["name"]
        macs = int(np.prod(shapes[weight]))
        if node["op"] == "Convolution":
            out = outputs[node["name"] + "_output"]
            macs *= int(np.prod(out[2:]))        # one weight product per output position
        total += macs
    return total


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(symbols.list_models()),
                        help="comma-separated names (default: every registered backbone)")
    parser.add_argument("--embedding-size", type=positive_int, default=512)
    parser.add_argument("--size", type=int_at_least(32), default=112, help="input height and width")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    print(f"$ python tools/model_info.py --models {','.join(names)} --embedding-size {args.embedding_size} "
          f"--size {args.size}")
    print(f"| model | params | trainable | BN running stats (not counted) | GMACs @{args.size} | output |")
    print("|---|---:|---:|---:|---:|---|")
    for name in names:
        s = model_stats(name, args.size, args.embedding_size)
        print(f"| {name} | {s['params']:,} | {s['trainable']:,} | {s['aux']:,} | {s['macs'] / 1e9:.3f} | "
              f"{s['output']} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
