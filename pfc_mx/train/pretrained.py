"""Fine-tuning: start a run from the weights in `model.pretrained` instead of a random backbone.

    model: {name: mobilefacenet_mxnet, embedding_size: 128, pretrained: "old/model-y1-test2/model,0"}
    model: {name: iresnet50, pretrained: runs/ms1mv3_r50}              # one of our checkpoints

`model.pretrained` is an insightface MXNet checkpoint `prefix,epoch` (or `prefix-NNNN.params`) or
one of our checkpoints (run dir, checkpoints dir, step dir or `latest`). The backbone must be the
one `model.name` builds, with `model.embedding_size`; anything else stops the run with one line
saying what the file holds. The class centers start fresh (new identities), unless the checkpoint
is ours and has as many classes as the data: then its centers and their momentum are loaded too.
It applies to a fresh start only; a resume continues from its own checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional

from pfc_mx import checkpoint
from pfc_mx.config import Config
from pfc_mx.errors import ConfigError, PfcError
from pfc_mx.evaluation.model_loader import resolve_checkpoint
from symbols.common import Backbone
from symbols.legacy import LEGACY_FAMILIES, assign, load_legacy_checkpoint
from symbols.legacy_graph import embedding_weight, family, graph_facts, read_symbol
from symbols.symbol_files import read_params

log = logging.getLogger("pfc_mx.train")


def initialise(cfg: Config, net: Backbone, pfc, num_classes: int) -> None:
    """Collective: net (and pfc's centers, see the module docstring) from cfg.model.pretrained on every
    rank; an error on any rank stops every rank with the same line."""
    from pfc_mx.train import faults

    error: Optional[BaseException] = None
    try:
        state = load_backbone_weights(net, cfg.model.pretrained, cfg.model.name, cfg.model.embedding_size)
        load_centers_if_same_classes(pfc, state, cfg.model.pretrained, num_classes, cfg.model.embedding_size)
    except Exception as e:  # raised on every rank below
        error = e
    faults.raise_if_any(error)


def _ours(prefix: str) -> Optional[Dict]:
    """state.json of our checkpoint folder holding prefix (…/backbone), its files' checksums checked;
    None for a legacy model. CheckpointError when the folder is damaged."""
    folder = Path(prefix).parent
    if Path(prefix).name != checkpoint.BACKBONE_PREFIX or not (folder / checkpoint.STATE).is_file():
        return None
    return checkpoint.check_integrity(folder)


def load_backbone_weights(net: Backbone, source: str, model_name: str, embedding_size: int) -> Optional[Dict]:
    """Set net's parameters from source; returns our checkpoint's state (None for a legacy model).

    Raises ConfigError naming model.pretrained when the file does not hold model.name's backbone.
    """
    where = f"model.pretrained = {source}"
    try:
        prefix, epoch = resolve_checkpoint(source)
        state = _ours(prefix)
    except PfcError as e:
        raise ConfigError(f"{where}: {e}") from None
    if state is not None and state.get("model") != model_name:
        raise ConfigError(f"{where}: holds a {state.get('model')} backbone, model.name is {model_name}")
    tensors = read_params(prefix, epoch)
    renames, _ = graph_facts(read_symbol(prefix))
    fc = embedding_weight(tensors, renames)
    if fc in tensors and int(tensors[fc].shape[0]) != embedding_size:
        raise ConfigError(f"{where}: its embedding size is {int(tensors[fc].shape[0])}, "
                          f"model.embedding_size is {embedding_size}")
    kind, ours = family(tensors), type(net).__name__.lower()
    if isinstance(net, LEGACY_FAMILIES) and kind and kind != ours:
        raise ConfigError(f"{where}: holds an insightface {kind} backbone, model.name {model_name} is an {ours}")
    try:
        if isinstance(net, LEGACY_FAMILIES):
            load_legacy_checkpoint(prefix, epoch, net=net, ctx=net.collect_params().list_ctx()[0], tensors=tensors)
        else:
            assign(net, tensors, {n: n for n in net.collect_params().keys()}, f"{prefix}-{epoch:04d}.params",
                   net.collect_params().list_ctx()[0])
    except PfcError as e:
        raise ConfigError(f"{where} does not fit model.name {model_name}: {e}") from None
    net.hybridize(static_alloc=True, static_shape=True)     # eps may have changed: rebuild the graph
    log.info("backbone initialised from %s-%04d.params", prefix, epoch)
    return state


def load_centers_if_same_classes(pfc, state: Optional[Dict], source: str, num_classes: int, dim: int) -> bool:
    """Load this rank's centers from our checkpoint when it has num_classes classes; True if loaded."""
    if state is None or state.get("num_classes") != num_classes or state.get("embedding_size") != dim:
        log.info("class centers start fresh (%s)", "a legacy model" if state is None else
                 f"the checkpoint has {state.get('num_classes')} classes, the data {num_classes}")
        return False
    folder = Path(resolve_checkpoint(source)[0]).parent
    checkpoint.load_centers_into(folder, pfc.class_start, pfc.weight, pfc.momentum)  # only this rank's rows
    log.info("class centers loaded from %s (%d classes)", folder, num_classes)
    return True
