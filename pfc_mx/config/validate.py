"""A plain dict tree (parsed YAML) into a Config: unknown keys refused with a suggestion, types and ranges checked."""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import fields
from typing import Any, Dict, List, Union, get_args, get_origin, get_type_hints

from pfc_mx.config.rules import RANGES, check_cross
from pfc_mx.config.schema import Config
from pfc_mx.errors import ConfigError


def _suggest(key: str, valid: List[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _number_text(value: Any, kind: type) -> Any:
    """A number written as text, as Python's int() or float() reads it; any other value unchanged.

    YAML 1.1 (PyYAML) reads 5e-4, 1e3 and 1.0e3 as strings (its floats need a dot and a signed
    exponent): here they become numbers, for YAML files and `--set` alike. An int key takes
    int() text ("1_000") exactly and float() text ("1e3") when it is a whole number; "inf" and
    "nan" parse, and the callers refuse them as not finite or not whole.
    """
    if not isinstance(value, str):
        return value
    if kind is int:
        try:
            return int(value)
        except ValueError:
            pass
    try:
        return float(value)
    except ValueError:
        return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check value against a type hint (int, float, bool, str, List[...], Union[...])."""
    origin = get_origin(hint)
    if origin is Union:
        for option in get_args(hint):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        number = _number_text(value, int)
        if isinstance(number, int) and not isinstance(number, bool):
            return number
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        number = _number_text(value, float)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(number)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported type hint {hint}")  # a bug in the schema, not user input


def build_config(tree: Dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict tree into a Config; raises ConfigError naming the bad key."""
    sections = {f.name: f for f in fields(Config)}
    values: Dict[str, Any] = {}
    for name, value in tree.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown key '{name}'{_suggest(name, list(sections))}")
        hint = get_type_hints(Config)[name]
        if not dataclasses.is_dataclass(hint):
            values[name] = _coerce(value, hint, f"{source}: {name}")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping")
        hints = get_type_hints(hint)
        kw = {}
        for key, v in value.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key '{name}.{key}'{_suggest(key, list(hints))}")
            v = _coerce(v, hints[key], f"{source}: {name}.{key}")
            check = RANGES.get((name, key))
            if check and not check[0](v):
                raise ConfigError(f"{source}: {name}.{key} = {v!r} must be {check[1]}")
            kw[key] = v
        values[name] = hint(**kw)
    cfg = Config(**values)
    check_cross(cfg, source)
    return cfg
