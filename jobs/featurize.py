"""Featurize images with a network's frozen prefix, one feature set per cut.

    python -m jobs.featurize --config jobs/configs/featurize_flowers.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.featurize --config FILE [key=value ...]
"""

import ray

from jobs._cli import config_from_args
from pipeline.config import FeaturizeJobConfig
from pipeline.featurize import featurize
from pipeline.sources import list_items
from pipeline.surgery import TransferLearning


def main(argv=None) -> None:
    cfg = config_from_args(__doc__, FeaturizeJobConfig, "featurize.dtype=float32", argv)
    net = TransferLearning(cfg.model.name, weights=cfg.model.weights,
                           image_size=cfg.model.image_size, **cfg.model.kwargs).build()
    items = list_items(cfg.data)
    ray.init(address=cfg.ray_address)
    featurize(net, items, cfg.featurize, cuts=cfg.cuts)


if __name__ == "__main__":
    main()
