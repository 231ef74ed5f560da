"""Memory per GPU and bytes communicated per step of a Partial FC run: pure arithmetic, no MXNet.

Usage::

    p = make_plan(RunSpec(num_classes=29_000_000, world=8, batch=128, sample_rate=0.1,
                          fp16=True, backbone="iresnet50"))
    p.total_bytes, p.memory      # per GPU; items (name, bytes, formula)
    p.comm                       # per GPU per step; items (name, bytes, formula)
    fits(p.total_bytes, 32 * GiB)  # leaves DEFAULT_HEADROOM free?

Everything is derived from the shapes of docs/design.md, "One training step" (W ranks, local batch
B, N = W·B, embedding D, C classes) and the backbone tables (tables.py), except two
calibrated constants per framework (CALIBRATIONS): activation bytes per image
and a framework overhead. "arcface_torch" (the default) was fitted to its
published PyTorch row at 125,000 classes, where the FC layer is 2% of the total,
and checked against its rows at 1.4M-29M classes, which the FC layer dominates
(tests/test_plan.py); "mxnet" was fitted to the original MXNet partial_fc release.
The largest shard (rank 0: num_local = C // W, + 1 when C % W ≠ 0) sets the
memory of a run.

Modules: tables (units, calibrations, buffer counts, backbones), spec (RunSpec and its
checks), estimate (memory and traffic items, make_plan, fits), assumptions (the sentences).
"""
from pfc_mx.capacity.estimate import Item, Plan, comm_items, fits, make_plan, memory_items
from pfc_mx.capacity.spec import (RunSpec, activation_bytes_per_image, largest_shard, overhead_bytes,
                                  sampled_centers, validate)
from pfc_mx.capacity.tables import (BACKBONES, CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_HEADROOM, FP16, FP32,
                                    INT64, BackboneSpec, Calibration, GiB, MiB)

__all__ = ["Item", "Plan", "comm_items", "fits", "make_plan", "memory_items", "RunSpec",
           "activation_bytes_per_image", "largest_shard", "overhead_bytes", "sampled_centers", "validate",
           "BACKBONES", "CALIBRATIONS", "DEFAULT_CALIBRATION", "DEFAULT_HEADROOM", "FP16", "FP32", "INT64",
           "BackboneSpec", "Calibration", "GiB", "MiB"]
