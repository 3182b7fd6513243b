"""Sweep fine-tune settings and unfreeze depth on Ray Tune, reusing cached feature sets.

    python -m jobs.tune --config jobs/configs/tune_flowers.yaml [-v] [key=value ...]
    python -m jobs.tune --preset compare --config FILE     # scratch vs frozen vs fine-tuned
    ray job submit --working-dir . -- python -m jobs.tune --config FILE [key=value ...]

Re-running the same sweep (same name, or same settings and data) resumes it.
"""

from jobs._cli import parse, run
from pipeline.settings import TuneJobConfig


def main(argv=None) -> None:
    cfg, opts = parse(
        __doc__, TuneJobConfig, "sweep.space.lr=0.001", argv, flags={"preset": "sweep.preset"}
    )
    run("tune", cfg, "pipeline.flows.run:run_sweep", opts)


if __name__ == "__main__":
    main()
