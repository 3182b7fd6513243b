"""Featurize images with a network's frozen prefix, one feature set per cut.

    python -m jobs.featurize --config jobs/configs/featurize_flowers.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.featurize --config FILE [key=value ...]
"""

import argparse

import ray

from pipeline.config import FeaturizeJobConfig, load_config
from pipeline.featurize import featurize
from pipeline.sources import list_items
from pipeline.surgery import TransferLearning


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help="YAML file with FeaturizeJobConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. featurize.dtype=float32")
    args = parser.parse_args(argv)
    cfg = load_config(FeaturizeJobConfig, args.config, args.overrides)
    net = TransferLearning(cfg.model.name, weights=cfg.model.weights, **cfg.model.kwargs).build()
    items = list_items(cfg.data)
    ray.init(address=cfg.ray_address)
    featurize(net, items, cfg.featurize, cuts=cfg.cuts)


if __name__ == "__main__":
    main()
