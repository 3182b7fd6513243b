"""Fit a network's trainable part (featurizing first when the feature set is not cached).

    python -m jobs.train --config jobs/configs/train_hymenoptera.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config FILE [key=value ...]
"""

import argparse

import ray

from pipeline.config import TrainJobConfig, load_config
from pipeline.train import run_job


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help="YAML file with TrainJobConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.epochs=5")
    args = parser.parse_args(argv)
    cfg = load_config(TrainJobConfig, args.config, args.overrides)
    ray.init(address=cfg.ray_address)
    run_job(cfg)


if __name__ == "__main__":
    main()
