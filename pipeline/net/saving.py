"""Loading a saved network: ``spec.json`` + ``model.safetensors``, checked, rebuilt, no pickle.

A network built from a zoo model is rebuilt from the zoo and its recorded builder ops are
replayed (:class:`pipeline.net.builder.TransferLearning`); one traced from any other module is
rebuilt from its saved graph (:mod:`pipeline.net.graphspec`). Either way the tensors load strictly
and the frozen set must come out as saved.

Example:

    >>> from pipeline.net.saving import load
    >>> from pipeline.net.builder import TransferLearning
    >>> builder = TransferLearning("tiny:cnn").set_feature_extractor("pool").n_out_replace("fc2", 3)
    >>> net = builder.build()
    >>> net.save(str(tmp / "net"))
    >>> again = load(str(tmp / "net"))
    >>> again.frozen == net.frozen, again.get_submodule("fc2").out_features
    (True, 3)
"""

from __future__ import annotations

import hashlib
import json

import fsspec
from safetensors.torch import load as load_tensors

from pipeline.net import graphspec, zoo
from pipeline.net.builder import TransferLearning
from pipeline.net.errors import SurgeryError
from pipeline.net.graph import SPEC_FORMAT, TransferNet
from pipeline.net.saved import SavedNet
from pipeline.runs.storage import resolve_latest


def load(path: str) -> TransferNet:
    """Rebuild a saved network: base architecture and replayed ops (or its saved graph),
    tensors loaded strictly. A ``latest`` pointer in ``path`` is followed."""
    fs, root = fsspec.core.url_to_fs(resolve_latest(path))
    try:
        files = {name: fs.cat_file(f"{root}/{name}") for name in ("spec.json", "model.safetensors")}
    except FileNotFoundError as e:
        raise SurgeryError(
            f"{path!r} is not a saved network: it needs spec.json and model.safetensors ({e})"
        ) from e
    return from_files(files, where=path)


def from_files(files: SavedNet | dict[str, bytes], where: str = "the network") -> TransferNet:
    """Inverse of :meth:`TransferNet.saved` (or ``to_files``), with the same checks as
    :func:`load`."""
    files = files.files if isinstance(files, SavedNet) else files
    spec, blob = json.loads(files["spec.json"]), files["model.safetensors"]
    if spec.get("format") != SPEC_FORMAT:
        raise SurgeryError(
            f"{where}/spec.json has format {spec.get('format')!r}; "
            f"this version reads format {SPEC_FORMAT}"
        )
    if hashlib.sha256(blob).hexdigest() != spec.get("safetensors_sha256"):
        raise SurgeryError(
            f"{where}/model.safetensors does not match spec.json (sha256 differs): "
            "the file was changed or belongs to another network; refusing to load"
        )
    net = _rebuild(spec, where)
    if sorted(net.frozen) != spec["frozen"]:
        raise SurgeryError(
            f"{where}: replaying the ops gives frozen set {sorted(net.frozen)}, "
            f"spec.json says {spec['frozen']}; the spec was edited"
        )
    try:
        net.load_state_dict(load_tensors(blob), strict=True)
    except RuntimeError as e:
        raise SurgeryError(
            f"{where}: model.safetensors does not fit the network spec.json describes: {e}"
        ) from e
    net.spec.update(
        {k: spec[k] for k in ("weights", "weights_sha256", "preprocess", "classes") if k in spec}
    )
    return net


def _rebuild(spec: dict, where: str) -> TransferNet:
    base = spec.get("base")
    if base:
        zm = zoo.load_model(
            base["model"], None, image_size=base.get("image_size"), **base["kwargs"]
        )
        return TransferLearning(zm).replay(spec["ops"]).build()
    if not spec.get("graph"):
        raise SurgeryError(f"{where}/spec.json names neither a zoo model nor a graph")
    root, graph = graphspec.rebuild(spec["graph"])
    kept = {k: v for k, v in spec.items() if k not in ("graph", "frozen", "safetensors_sha256")}
    net = TransferNet(root, graph, kept, frozen=spec["frozen"])
    net.check_shapes()
    return net
