"""Classify images with an exported network; writes Parquet (id, source, class, probabilities).

    python -m jobs.predict --config jobs/configs/predict_hymenoptera.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.predict --config FILE [key=value ...]
"""

import ray

from jobs._cli import config_from_args
from pipeline.config import PredictJobConfig
from pipeline.predict import run_job


def main(argv=None) -> None:
    cfg = config_from_args(__doc__, PredictJobConfig, "model=runs/train/x/model", argv)
    ray.init(address=cfg.ray_address)
    run_job(cfg)


if __name__ == "__main__":
    main()
