"""On a cluster of several machines the local paths a job reads and writes must be the same
files on every node (a shared mount): its decode tasks read the data and its writers, training
workers and trials write the outputs wherever Ray places them. Checked once Ray is up, with one
task pinned to each node, before any work: a path a node cannot see is one
:class:`~pipeline.settings.ConfigError` naming the field, the path and the node. Object-storage
URIs are not checked (every node reaches them the same way). One node: nothing to check.

Example:

    >>> from pipeline.flows.visibility import local_paths
    >>> from pipeline.settings import TrainJobConfig
    >>> cfg = TrainJobConfig(data={"sources": ["/data/images", "s3://bucket/more"]})
    >>> for field, path, written in local_paths(cfg):
    ...     print(field, path, "written" if written else "read")
    data.sources[0] /data/images read
    featurize.out runs/features written
    train.storage runs/train written
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.runs.storage import is_local
from pipeline.settings import ConfigError

# (field, attribute path, written by the job); model.weights and model.start_from are not
# here: the driver reads them and ships the network to the workers
FIELDS = (
    ("model", ("model",), False),  # jobs.predict: the exported network
    ("data", ("data",), False),  # jobs.demo: a folder of images
    ("featurize.out", ("featurize", "out"), True),
    ("train.storage", ("train", "storage"), True),
    ("sweep.storage", ("sweep", "storage"), True),
    ("predict.out", ("predict", "out"), True),
    ("out", ("out",), True),
)


def local_paths(cfg) -> list[tuple[str, str, bool]]:
    """``(field, path, written)`` of every local path in a job config."""
    found = []
    data = getattr(cfg, "data", None)
    for i, source in enumerate(getattr(data, "sources", None) or []):
        if is_local(source.uri):
            uri = source.uri.removeprefix("file://")
            found.append((f"data.sources[{i}]", _unglobbed(uri), False))
    for field, attributes, written in FIELDS:
        value = cfg
        for name in attributes:
            value = getattr(value, name, None)
        if isinstance(value, (str, Path)) and _is_path(str(value)):
            found.append((field, str(value), written))
    return found


def _is_path(value: str) -> bool:
    """A local file or folder name (not a URI, a weights name like IMAGENET1K_V1, or 'hub')."""
    return is_local(value) and ("/" in value or "." in value or value == "runs")


def _unglobbed(uri: str) -> str:
    """A glob's fixed directory (what every node must see)."""
    if not any(c in uri for c in "*?["):
        return uri
    head = uri.split("*")[0].split("?")[0].split("[")[0]
    return os.path.dirname(head) or "."


def check_visible(cfg) -> None:
    """Refuse a local path that some node of a multi-node cluster cannot see (see the module
    doc). Outputs are probed with a file this process writes there."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    paths = local_paths(cfg)
    if len(nodes) < 2 or not paths:
        return
    probes, checked = [], []
    for field, path, written in paths:
        target = Path(path).absolute()
        if written:
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".visible-{uuid.uuid4().hex}"
            probe.touch()
            probes.append(probe)
            target = probe
        checked.append((field, path, str(target)))
    try:
        _each_node_sees(nodes, checked)
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)


def _each_node_sees(nodes: list[dict], checked: list[tuple[str, str, str]]) -> None:
    missing = ray.remote(num_cpus=0)(_missing)
    targets = [t for _, _, t in checked]
    answers = ray.get(
        [
            missing.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(targets)
            for n in nodes
        ]
    )
    for node, absent in zip(nodes, answers):
        for field, path, target in checked:
            if target in absent:
                raise ConfigError(
                    field,
                    f"{Path(path).absolute()} is not visible on node {node['NodeManagerAddress']}"
                    f" (one of {len(nodes)} nodes): every node reads the data and writes the "
                    "outputs, so give a path on a mount all nodes share, or an object-storage "
                    "URI (s3://..., gs://...)",
                )


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]
