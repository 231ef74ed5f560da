"""Config files: YAML with `_base_` inheritance, `--set section.key=value` overrides, paths made absolute.

Relative paths are resolved against the folder of the YAML file that set them (overrides:
against the working directory), so a recipe works from any working directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from pfc_mx.config.schema import Config
from pfc_mx.config.validate import build_config
from pfc_mx.errors import ConfigError

PATH_KEYS = {("data", "rec"), ("output", "dir"), ("model", "pretrained")}  # resolved against the file


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read one YAML file with its `_base_` chain merged in; paths made absolute."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `_base_` cycle through {' -> '.join(p.name for p in seen)}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    bases = raw.pop("_base_", [])
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    for section, keys in raw.items():
        if isinstance(keys, dict):
            for key in list(keys):
                if (section, key) in PATH_KEYS and isinstance(keys[key], str) and keys[key]:
                    keys[key] = str((path.parent / keys[key]).resolve())
                elif (section, key) == ("eval", "targets"):
                    keys[key] = _target_paths(keys[key], path.parent)
    _deep_merge(merged, raw)
    return merged


def _target_paths(targets: Any, base: Path) -> Any:
    """eval.targets with its paths (not bare names like 'lfw') made absolute against base."""
    if not isinstance(targets, list):
        return targets
    return [str((base / t).resolve()) if isinstance(t, str) and ("/" in t or t.endswith(".bin")) else t
            for t in targets]


def _deep_merge(into: Dict[str, Any], other: Dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


def _apply_override(tree: Dict[str, Any], text: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, value_text = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) not in (1, 2) or not all(parts):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    if tuple(parts) in PATH_KEYS and isinstance(value, str) and value:
        value = str(Path(value).resolve())
    elif tuple(parts) == ("eval", "targets"):
        value = _target_paths(value, Path.cwd())
    if len(parts) == 1:
        tree[parts[0]] = value
    else:
        section = tree.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {text!r}: {parts[0]} is not a section")
        section[parts[1]] = value


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML config (with its `_base_` chain), apply `section.key=value` overrides, validate."""
    tree = _read_yaml(Path(path))
    for text in overrides or []:
        _apply_override(tree, text)
    return build_config(tree, source=str(path))


def check_data_paths(cfg: Config) -> None:
    """Fail fast, before ranks do heavy work, when the training data is not where the config says."""
    if not cfg.data.rec:
        raise ConfigError("data.rec is not set: give the dataset folder (train.rec, train.idx, property)")
    rec = Path(cfg.data.rec)
    rec_file = rec / "train.rec" if rec.is_dir() else rec
    if not rec_file.is_file():
        raise ConfigError(f"data.rec: {rec_file} does not exist")
    if not rec_file.with_suffix(".idx").is_file():
        raise ConfigError(f"data.rec: index {rec_file.with_suffix('.idx')} is missing")
    from pfc_mx.data.verification_bin import find_bins
    find_bins(cfg.eval.targets, rec_file.parent, what="eval.targets")


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (loadable again with load_config)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
