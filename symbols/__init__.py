"""Gluon backbones (iresnet18–200, iresnet_tiny, mobilefacenet, gluoncv:<name>) and their registry.

    import symbols
    net = symbols.get_model("iresnet50")                 # raw RGB (B, 3, 112, 112) -> (B, 512)
    symbols.save_backbone(net, "out/backbone")           # out/backbone-symbol.json + -0000.params
    net = symbols.load_backbone("out/backbone", "iresnet50")
    net = symbols.import_legacy("old/model", 0)          # an insightface model-symbol.json + model-0000.params
"""
from symbols.common import Backbone
from symbols.legacy import load_backbone, load_legacy_checkpoint, save_backbone, save_legacy_checkpoint
from symbols.legacy_import import import_legacy
from symbols.registry import get_model, list_models

__all__ = ["Backbone", "get_model", "list_models", "save_backbone", "load_backbone",
           "save_legacy_checkpoint", "load_legacy_checkpoint", "import_legacy"]
