"""Classify images with an exported network; writes Parquet (id, source, class, probabilities).

    python -m jobs.predict --config jobs/configs/predict_hymenoptera.yaml [key=value ...]
    ray job submit --working-dir . -- python -m jobs.predict --config FILE [key=value ...]
"""

import argparse

import ray

from pipeline.config import PredictJobConfig, load_config
from pipeline.predict import run_job


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help="YAML file with PredictJobConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model=runs/train/x/model")
    args = parser.parse_args(argv)
    cfg = load_config(PredictJobConfig, args.config, args.overrides)
    ray.init(address=cfg.ray_address)
    run_job(cfg)


if __name__ == "__main__":
    main()
