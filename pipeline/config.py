"""Job configs: what each ``python -m jobs.X`` reads, assembled from the stage settings, plus YAML
loading with ``key=value`` overrides and the generated config reference.

Example:

    >>> from pipeline.config import TrainJobConfig, load_config
    >>> cfg = load_config(TrainJobConfig, None, ["data.sources=[images/]", "train.epochs=3"])
    >>> cfg.train.epochs, cfg.data.sources[0].uri
    (3, 'images/')
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipeline.settings import (
    ConfigError,
    DataConfig,
    FeaturizeConfig,
    FineTuneConfig,
    ModelConfig,
    NetworkConfig,
    PredictConfig,
    Settings,
    TrainConfig,
)
from pipeline.sweep_settings import CompareConfig, Distribution, SearchSpace, SweepConfig

RAY_ADDRESS = Field(
    None, description="default: RAY_ADDRESS, a running local cluster, else a new local instance"
)


class DemoConfig(Settings):
    """``python -m jobs.demo``: the packaged pretrained default on a generated (or given)
    dataset; featurize, fit a head, sweep, compare, one report. Everything lands under ``out``:
    ``data`` (generated), ``features``, ``train``, ``tune`` and ``report.html``."""

    model: ModelConfig = Field(
        ModelConfig(name="default"),
        description=("the network; its image_size defaults to the demo's image_size"),
    )
    head: str = Field("_fc", description="the output layer, resized to the classes")
    cut: str | None = Field(
        None,
        description="the fit step freezes through this node; default: everything below the head",
    )
    data: Path | None = Field(None, description="folder-per-class images; generated when unset")
    images_per_class: int = Field(60, gt=1, description="generated dataset: images per class")
    clutter: int = Field(12, ge=0, description="generated dataset: distractors per image")
    image_size: int = Field(
        96,
        ge=16,
        description="generated images' size and the network's "
        "input crops (96 keeps CPU runs short)",
    )
    splits: dict[str, float] = Field(
        {"train": 0.6, "val": 0.2, "test": 0.2}, description="hash split of the images"
    )
    steps: list[Literal["fit", "sweep", "compare"]] = Field(
        ["fit", "sweep", "compare"], min_length=1, description="which steps run, in this order"
    )
    train: TrainConfig = Field(
        TrainConfig(
            epochs=20,
            batch_size=32,
            patience=6,
            fine_tune=FineTuneConfig(
                optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine"
            ),
        ),
        description="the fit step's settings (its storage is <out>/train); the sweep and the "
        "comparison take splits, bn_eval and the like from it",
    )
    space: SearchSpace = Field(
        SearchSpace(unfreeze={"grid": [0, 2]}, lr={"grid": [1e-3, 1e-2]}, epochs=12, batch_size=32),
        description="the sweep step's search space",
    )
    num_samples: int = Field(1, gt=0, description="sweep trials per grid point")
    compare: CompareConfig = Field(
        CompareConfig(unfreeze=2, epochs=8, batch_size=32),
        description="the compare step's settings",
    )
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per sweep and compare trial")
    out: Path = Field(Path("runs/demo"), description="where everything is written")
    seed: int = Field(0, description="seeds the generated data and the sweeps")
    ray_address: str | None = RAY_ADDRESS

    def output_root(self) -> str:
        return str(self.out)


class FeaturizeJobConfig(Settings):
    """``python -m jobs.featurize``: one pass over the images, one feature set per cut."""

    model: ModelConfig = ModelConfig()
    cuts: list[str | list[str]] = Field(
        ["flatten"], min_length=1, description="freeze through each of these nodes"
    )
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    ray_address: str | None = RAY_ADDRESS

    def output_root(self) -> str:
        return self.featurize.out


class TrainJobConfig(NetworkConfig):
    """``python -m jobs.train``: surgery, featurize when needed (cached), fit, report, export."""

    mode: Literal["features", "end_to_end"] = Field(
        "features",
        description="features: featurize once (cached), fit on the feature set; "
        "end_to_end: decode, augment and run the prefix every epoch",
    )
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    train: TrainConfig = TrainConfig()
    ray_address: str | None = RAY_ADDRESS

    def network(self) -> NetworkConfig:
        """The network part of the job, as the stages take it."""
        return NetworkConfig.model_validate(
            self.model_dump(include=set(NetworkConfig.model_fields))
        )

    def output_root(self) -> str:
        return self.train.storage


class TuneJobConfig(SweepConfig):
    """``python -m jobs.tune``: featurize every cut in the space once, sweep on Ray Tune, write
    the results table, plots, best network and report. ``preset: compare`` runs the three-row
    scratch / frozen / fine-tuned comparison instead of the search space."""

    name: str | None = Field(
        None,
        description="default: a hash of the settings and the data; "
        "re-running the same name resumes the sweep",
    )
    label: str | None = Field(
        None,
        description="readable start of the default sweep name; jobs set it to the config "
        "file's stem. Default: the preset",
    )
    storage: str = Field("runs/tune", description="local path or URI the sweeps are written to")
    model: ModelConfig = ModelConfig()
    head: str = Field("classifier.1", description="the output layer, resized to the classes")
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    ray_address: str | None = RAY_ADDRESS

    def sweep(self) -> SweepConfig:
        """The sweep part of the job, as the tune stage takes it."""
        return SweepConfig.model_validate(self.model_dump(include=set(SweepConfig.model_fields)))

    def test_splits(self) -> list[str]:
        """Splits of the data besides train and val that are evaluated at the end (``test``)."""
        return [s for s in self.data.splits if s == "test"]

    def output_root(self) -> str:
        return self.storage


class PredictJobConfig(Settings):
    """``python -m jobs.predict``: classify images with an exported network."""

    model: str = Field(
        description="an exported network: a directory with spec.json and "
        "model.safetensors (e.g. <run>/model)"
    )
    data: DataConfig
    predict: PredictConfig = PredictConfig()
    ray_address: str | None = RAY_ADDRESS

    def output_root(self) -> str:
        # the logs go beside the predictions, not into them: the directory stays readable as
        # one Parquet dataset (pandas.read_parquet(predict.out))
        return self.predict.out.rstrip("/").rpartition("/")[0] or "."


def labelled(cfg: BaseModel, label: str) -> BaseModel:
    """``cfg`` with ``label`` as the readable start of its default run or sweep name, unless
    the config gives its own."""
    if isinstance(cfg, TrainJobConfig) and cfg.train.label is None:
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"label": label})})
    if isinstance(cfg, TuneJobConfig) and cfg.label is None:
        return cfg.model_copy(update={"label": label})
    return cfg


JOB_CONFIGS = (DemoConfig, FeaturizeJobConfig, TrainJobConfig, TuneJobConfig, PredictJobConfig)


# ---------------------------------------------------------------------------- loading


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
        for nested in _models_in(field.annotation)[:1]:
            out += _paths(nested, f"{prefix}{name}.")
    return out


def _is_union_tag(part) -> bool:
    # pydantic names the union member it tried in the location: ('cut', 'list[str]', 0)
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "none"))


def _model_at(cls: type[BaseModel], loc: list) -> type[BaseModel]:
    """The settings model at ``loc`` (a list of field names and indexes) below ``cls``."""
    for part in loc:
        if isinstance(part, str) and part in cls.model_fields:
            models = _models_in(cls.model_fields[part].annotation)
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


# ---------------------------------------------------------------------------- reference


def reference(roots: tuple[type[BaseModel], ...] = JOB_CONFIGS) -> str:
    """The config reference as Markdown: one table per job config and per model nested in one
    (field, type, default, meaning), generated from the models so it cannot drift from them."""
    order: list[type[BaseModel]] = []

    def visit(cls: type[BaseModel]) -> None:
        if cls not in order:
            order.append(cls)
            for field in cls.model_fields.values():
                for nested in _models_in(field.annotation):
                    visit(nested)

    for root in roots:
        visit(root)
    return "\n\n".join(_model_table(cls) for cls in order) + "\n"


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _model_table(cls: type[BaseModel]) -> str:
    doc = " ".join((cls.__doc__ or "").split())
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        cells = [
            f"`{name}`",
            _type_name(field.annotation),
            _default(field),
            " ".join((field.description or "").split()),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return f"### {cls.__name__}\n\n{doc}\n\n" + "\n".join(rows)


def _type_name(annotation) -> str:
    if annotation == Distribution:
        return "distribution"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
        if not value:
            return "its defaults"
    return f"`{json.dumps(value, default=str)}`"  # default=str: paths
