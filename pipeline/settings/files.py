"""Reading a job config: YAML, then ``key.sub=value`` overrides, validated once, and every
problem as one :class:`~pipeline.settings.base.ConfigError` naming the field.

Example:

    >>> from pipeline.settings import TrainJobConfig, load_config
    >>> cfg = load_config(TrainJobConfig, None, ["data.sources=[images/]", "train.epochs=3"])
    >>> cfg.train.epochs, cfg.data.sources[0].uri
    (3, 'images/')
    >>> load_config(TrainJobConfig, None, ["data.sources=[x]", "train.epoch=3"])
    Traceback (most recent call last):
    ...
    pipeline.settings.base.ConfigError: train.epoch: unknown key; did you mean train.epochs or ...
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import get_args

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.settings.base import ConfigError


def load_config(cls: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Read YAML ``path`` (optional), apply ``key.sub=value`` overrides (values are YAML).
    Anything wrong is one :class:`ConfigError` naming the field (and, for an unknown key, the
    closest valid ones)."""
    data = _read_yaml(path) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(item, "an override must look like key=value (e.g. train.epochs=5)")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, f"{part!r} is a value, not a section")
        node[leaf] = yaml.safe_load(value)
    try:
        return cls.model_validate(_onto_defaults(cls, data or {}))
    except ValidationError as e:
        raise _one_line(cls, e) from e


def _read_yaml(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError("--config", f"{file.resolve()} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{file} is not valid YAML: {e}".replace("\n", " ")) from e
    if data is not None and not isinstance(data, dict):
        raise ConfigError("--config", f"{file} must hold a mapping of settings")
    return data or {}


def _one_line(cls: type[BaseModel], error: ValidationError) -> ConfigError:
    """The most telling problem pydantic found (an unknown key first: a typo explains the
    rest), as a field path and what to do about it."""
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = [p for p in first["loc"] if not _is_union_tag(p)]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    more = len(errors) - 1
    tail = f" ({more} more problem{'s' * (more > 1)}; -v shows them)" if more else ""
    if first["type"] == "extra_forbidden":
        parent, key = field.rpartition(".")[0], str(loc[-1])
        valid = list(_model_at(cls, loc[:-1]).model_fields)
        here = [f"{parent}.{k}".lstrip(".") for k in valid]
        elsewhere = [p for p in _paths(cls) if p.rpartition(".")[2] == key]
        close = list(dict.fromkeys(difflib.get_close_matches(field, here, n=3) + elsewhere))[:3]
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        keys = f"{parent}'s keys" if parent else "top-level keys"
        return ConfigError(field, f"unknown key; {hint}{keys}: {', '.join(valid)}{tail}")
    if first["type"] == "missing":
        return ConfigError(field, f"required (python -m jobs.reference lists every field){tail}")
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) else ""
    return ConfigError(field, f"{first['msg']}{shown}{tail}")


def _paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field's dotted path below ``cls`` (``train.fine_tune.lr``): a key given at the
    wrong level (``epochs`` for ``train.epochs``) is matched against these."""
    out = []
    for name, field in cls.model_fields.items():
        out.append(prefix + name)
        for nested in models_in(field.annotation)[:1]:
            out += _paths(nested, f"{prefix}{name}.")
    return out


def _is_union_tag(part) -> bool:
    # pydantic names the union member it tried in the location: ('cut', 'list[str]', 0)
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "none"))


def _model_at(cls: type[BaseModel], loc: list) -> type[BaseModel]:
    """The settings model at ``loc`` (a list of field names and indexes) below ``cls``."""
    for part in loc:
        if isinstance(part, str) and part in cls.model_fields:
            models = models_in(cls.model_fields[part].annotation)
            if models:
                cls = models[0]
    return cls


def _onto_defaults(cls: type[BaseModel], data: dict) -> dict:
    """Lay partial sections onto the settings of fields whose default is a configured model
    (``DemoConfig.train``, ``CompareConfig.frozen``): ``train.epochs=5`` changes the epochs and
    keeps that default's optimizer, instead of resetting the section to the class defaults."""
    for name, field in cls.model_fields.items():
        default, given = field.default, data.get(name)
        if isinstance(default, BaseModel) and isinstance(given, dict):
            merged = _deep_merge(default.model_dump(exclude_unset=True), given)
            data[name] = _onto_defaults(type(default), merged)
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if nested else value
    return out


def models_in(annotation) -> list[type[BaseModel]]:
    """The settings models an annotation holds (``TrainConfig | None`` -> ``[TrainConfig]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]
