"""Sweep fine-tune settings and unfreeze depth on Ray Tune, reusing cached feature sets.

    python -m jobs.tune --config jobs/configs/tune_flowers.yaml [key=value ...]
    python -m jobs.tune --preset compare --config FILE     # scratch vs frozen vs fine-tuned
    ray job submit --working-dir . -- python -m jobs.tune --config FILE [key=value ...]

Re-running the same sweep (same name, or same settings and data) resumes it.
"""

import ray

from jobs._cli import config_from_args
from pipeline.config import TuneJobConfig
from pipeline.tune import run_sweep


def main(argv=None) -> None:
    cfg = config_from_args(__doc__, TuneJobConfig, "space.lr=0.001", argv, flags=("preset",))
    ray.init(address=cfg.ray_address)
    run_sweep(cfg)


if __name__ == "__main__":
    main()
