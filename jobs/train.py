"""Fit a network's trainable part (featurizing first when the feature set is not cached).

    python -m jobs.train --config jobs/configs/train_hymenoptera.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config FILE [key=value ...]
"""

import ray

from jobs._cli import config_from_args
from pipeline.config import TrainJobConfig
from pipeline.train import run_job


def main(argv=None) -> None:
    cfg = config_from_args(__doc__, TrainJobConfig, "train.epochs=5", argv)
    ray.init(address=cfg.ray_address)
    run_job(cfg)


if __name__ == "__main__":
    main()
