"""The config reference: one Markdown table per job config and per section nested in one,
generated from the models so it cannot drift from them (``python -m jobs.reference``).

Example:

    >>> from pipeline.settings import reference
    >>> print(reference().splitlines()[0])
    ### DemoConfig
"""

from __future__ import annotations

import json
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel

from pipeline.settings.files import models_in
from pipeline.settings.jobs import JOB_CONFIGS
from pipeline.settings.sweeps import Distribution


def reference(roots: tuple[type[BaseModel], ...] = JOB_CONFIGS) -> str:
    """The config reference as Markdown: one table per job config and per model nested in one
    (field, type, default, meaning), generated from the models so it cannot drift from them."""
    order: list[type[BaseModel]] = []

    def visit(cls: type[BaseModel]) -> None:
        if cls not in order:
            order.append(cls)
            for field in cls.model_fields.values():
                for nested in models_in(field.annotation):
                    visit(nested)

    for root in roots:
        visit(root)
    return "\n\n".join(_model_table(cls) for cls in order) + "\n"


def _model_table(cls: type[BaseModel]) -> str:
    doc = " ".join((cls.__doc__ or "").split())
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        cells = [
            f"`{name}`",
            _annotation_text(field.annotation),
            _default(field),
            " ".join((field.description or "").split()),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return f"### {cls.__name__}\n\n{doc}\n\n" + "\n".join(rows)


def _annotation_text(annotation) -> str:
    if annotation == Distribution:
        return "distribution"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_annotation_text(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_annotation_text(a) for a in args)}]"
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
