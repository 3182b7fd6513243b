"""What every settings model shares: unknown keys refused, one-line errors, and the constants
more than one section uses.

Example:

    >>> from pipeline.settings.base import ConfigError
    >>> str(ConfigError("train.epochs", "must be positive"))
    'train.epochs: must be positive'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS): larger images are refused.
MAX_IMAGE_PIXELS = 89_478_485

# What runs layers without gradients: see pipeline.engine.
Engine = Literal["auto", "torch", "onnxruntime"]
DEFAULT_ENGINE: Engine = "auto"
ENGINE_HELP = (
    "what runs the frozen layers: onnxruntime (exported once, ~4x eager PyTorch on CPUs), torch, "
    "or auto (onnxruntime on CPU, torch on GPU unless ONNX Runtime's CUDA provider is installed)"
)

RAY_ADDRESS_HELP = "default: RAY_ADDRESS, a running local cluster, else a new local instance"


class ConfigError(ValueError):
    """A setting that cannot work, in one line: the field, the value, what to do instead.
    Jobs print it as ``error: <field>: <message>`` and exit 2, before Ray starts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class Settings(BaseModel):
    """Unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid")
