"""Gluon backbones; the registry lives in symbols/registry.py (see get_model)."""
