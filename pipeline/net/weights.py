"""Weights files: read without pickle, loaded strictly, and when they do not fit, which zoo
architecture they do fit (matched by parameter names, built on the meta device: no memory, no
compute).

Example:

    >>> import torch
    >>> from torch import nn
    >>> from pipeline.net.weights import fitting_architecture, read_state_dict
    >>> torch.save(nn.Linear(3, 2).state_dict(), tmp / "linear.pth")
    >>> state, digest = read_state_dict(str(tmp / "linear.pth"))
    >>> sorted(state), len(digest)
    (['bias', 'weight'], 64)
    >>> candidates = {"norm": lambda: nn.BatchNorm1d(3), "fc": lambda: nn.Linear(5, 1)}
    >>> fitting_architecture(state, candidates)
    'fc'
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from pipeline.net.errors import ZooError


class WeightsMismatch(ZooError):
    """A state_dict whose names are not the model's; ``state`` is kept to say what it fits."""

    def __init__(self, message: str, state: dict):
        super().__init__(message)
        self.state = state


def read_state_dict(uri: str) -> tuple[dict[str, torch.Tensor], str]:
    """Read a state_dict from a local path or fsspec URI; returns it with the file's sha256.

    ``.safetensors`` files load with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors.
    """
    try:
        with fsspec.open(uri, "rb") as f:
            blob = f.read()
    except FileNotFoundError as e:
        raise ZooError(f"weights file not found: {uri!r}") from e
    digest = hashlib.sha256(blob).hexdigest()
    if uri.endswith(".safetensors"):
        return load_safetensors(blob), digest
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only raises UnpicklingError for arbitrary objects
        raise ZooError(
            f"{uri!r} is not a plain tensor state_dict (refused to unpickle it): {e}"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ZooError(f"{uri!r} holds a {type(state).__name__}, expected a state_dict")
    return state, digest


def load_weights(model: nn.Module, uri: str) -> str:
    """Load a state_dict file into ``model`` strictly; returns the file's sha256."""
    state, digest = read_state_dict(uri)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsMismatch(
            f"weights {uri!r} do not fit {type(model).__name__}: "
            f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}",
            state,
        )
    return digest


def fitting_architecture(state: dict, candidates: dict[str, Callable[[], nn.Module]]) -> str | None:
    """The first of ``candidates`` (name -> constructor) whose parameter and buffer names are
    exactly ``state``'s, built on the meta device; ``None`` when none is."""
    names = set(state)
    for name, build in candidates.items():
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision's notes on default inits
                model = build()
        except Exception:  # an architecture that cannot be built bare is not the one
            continue
        if set(model.state_dict()) == names:
            return name
    return None
