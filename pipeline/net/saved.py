"""A network in its save format, in memory: ``spec.json`` and ``model.safetensors`` as bytes.

Example:

    >>> from pipeline.net.builder import TransferLearning
    >>> saved = TransferLearning("tiny:cnn").build().saved()
    >>> sorted(saved.files), len(saved.digest), saved.spec["base"]["model"]
    (['model.safetensors', 'spec.json'], 64, 'tiny:cnn')
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import fsspec


@dataclass(frozen=True)
class SavedNet:
    """A network in its save format, in memory: ``files`` (``spec.json``, then
    ``model.safetensors``) and their ``digest``. Made once per flow, it is what travels to
    actors and workers and what run names and staged copies are keyed on."""

    files: dict[str, bytes]

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the spec and the tensors: the same network, the same digest."""
        digest = hashlib.sha256()
        for name in ("spec.json", "model.safetensors"):
            digest.update(self.files[name])
        return digest.hexdigest()

    @property
    def spec(self) -> dict:
        return json.loads(self.files["spec.json"])

    def write(self, path: str) -> None:
        """Write the files under ``path`` (local or fsspec URI), the weights last: their
        presence means the directory is complete."""
        fs, root = fsspec.core.url_to_fs(path)
        fs.makedirs(root, exist_ok=True)
        for name in ("spec.json", "model.safetensors"):
            with fs.open(f"{root}/{name}", "wb") as f:
                f.write(self.files[name])
