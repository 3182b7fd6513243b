"""What featurizing a network produces: one feature set per cut, each named by the fingerprint of
everything that determines its features (:func:`plan`), and the check that a feature set was made
by a network's frozen prefix (:func:`check_feature_set`).

Example:

    >>> from pipeline.features.plan import plan
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.settings import FeaturizeConfig
    >>> net = TransferLearning("tiny:cnn").build()
    >>> [t.uri.split("/")[-1][:17] for t in plan(net, "data-1", FeaturizeConfig(), ["pool"])]
    ['tiny_cnn_pool-...']
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.decode import DECODER, GPU_DECODER
from pipeline.data.featureset import FeatureSet
from pipeline.data.parts import directory_name, fingerprint
from pipeline.data.schema import FORMAT, FeatureSetError
from pipeline.net.builder import TransferLearning
from pipeline.net.errors import SurgeryError
from pipeline.net.graph import TransferNet
from pipeline.settings import FeaturizeConfig, Preprocess


@dataclass
class Target:
    """One feature set to produce: a cut, the network frozen at it, and where it goes."""

    cut: list[str]
    net: TransferNet
    identity: dict
    uri: str

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.net.frontier_shapes()


def plan(
    net: TransferNet, data: str, cfg: FeaturizeConfig, cuts: list[str | list[str]] | None = None
) -> list[Target]:
    """The feature sets to produce from the images whose fingerprint is ``data``: the net's own
    frozen set, or one per cut in ``cuts`` (each a node name or list of names to freeze
    through), each named by its fingerprint."""
    preprocess = preprocess_of(net, cfg)
    variants = (
        [(net.frontier(), net)]
        if not cuts
        else [
            (c, TransferLearning(net).set_feature_extractor(*c).build())
            for c in ([c] if isinstance(c, str) else list(c) for c in cuts)
        ]
    )
    base = net.spec.get("base") or {}
    targets = []
    for cut, variant in variants:
        if not variant.frozen:
            raise SurgeryError("nothing is frozen: call set_feature_extractor(...) or give cuts")
        identity = {
            "format": FORMAT,
            "model": base.get("model"),
            "model_kwargs": base.get("kwargs"),
            "weights_sha256": net.spec.get("weights_sha256"),
            "cut": cut,
            "frozen": sorted(variant.frozen),
            "prefix_sha256": variant.prefix_sha256(),
            "frontier": {k: list(v) for k, v in variant.frontier_shapes().items()},
            "preprocess": preprocess.model_dump(),
            "decoder": GPU_DECODER if cfg.gpu_decode else DECODER,
            "dtype": cfg.dtype,
            "views": cfg.views,
            "augment": cfg.augment.model_dump() if cfg.views else None,
            "data": data,
        }
        # the cut's name is kept for people, not hashed: "features.16" and "features.16.add"
        # freeze the same nodes, and the frozen set, frontier and prefix hash say so
        digest = fingerprint({k: v for k, v in identity.items() if k != "cut"})
        name = directory_name(str(base.get("model", "net")), variant.frontier(), digest)
        targets.append(
            Target(
                cut, variant, dict(identity, fingerprint=digest), f"{cfg.out.rstrip('/')}/{name}"
            )
        )
    return targets


class FeatureSetMismatch(FeatureSetError):
    """The feature set was made by another prefix than the network's."""


def check_feature_set(net: TransferNet, fs: FeatureSet) -> None:
    """Refuse a feature set that another prefix made, naming the first field that differs
    (the fields :func:`plan` put in its identity)."""
    m, base = fs.manifest, net.spec.get("base") or {}
    preprocess = net.spec.get("preprocess")
    checks = [
        ("model", m.get("model"), base.get("model")),
        ("model_kwargs", m.get("model_kwargs"), base.get("kwargs")),
        ("weights_sha256", m.get("weights_sha256"), net.spec.get("weights_sha256")),
        ("frozen", m.get("frozen"), sorted(net.frozen)),
        ("frontier", m.get("frontier"), {k: list(v) for k, v in net.frontier_shapes().items()}),
        (
            "preprocess",
            m.get("preprocess") and Preprocess(**m["preprocess"]),
            preprocess and Preprocess(**preprocess),
        ),
        ("prefix_sha256", m.get("prefix_sha256"), net.prefix_sha256()),
    ]
    for name, made, have in checks:
        if made != have:
            raise FeatureSetMismatch(
                f"feature set {fs.uri} was not made by this network's frozen prefix: {name} "
                f"differs ({_difference(made, have)}). Featurize with this network (python -m "
                "jobs.featurize, or jobs.train which featurizes when needed), or train the "
                "network the set was made with."
            )


def _difference(made, have) -> str:
    if isinstance(made, list) and isinstance(have, list):
        only_made = [x for x in made if x not in have]
        only_have = [x for x in have if x not in made]
        return f"only in the feature set: {only_made[:8]}; only in the network: {only_have[:8]}"
    return f"the feature set has {str(made)[:300]}, the network {str(have)[:300]}"


def preprocess_of(net: TransferNet, cfg: FeaturizeConfig) -> Preprocess:
    """The configured preprocessing, else the network's own."""
    if cfg.preprocess is not None:
        return cfg.preprocess
    if not net.spec.get("preprocess"):
        raise ValueError(
            "the network has no preprocessing (resize, crop, mean, std): set "
            "featurize.preprocess in the config"
        )
    return Preprocess(**net.spec["preprocess"])
