"""Featurize images with a network's frozen prefix, one feature set per cut.

python -m jobs.featurize --config jobs/configs/featurize_flowers.yaml [-v] [key=value ...]
ray job submit --working-dir . -- python -m jobs.featurize --config FILE [key=value ...]
"""

from jobs._cli import parse, run
from pipeline.settings import FeaturizeJobConfig


def main(argv=None) -> None:
    cfg, opts = parse(__doc__, FeaturizeJobConfig, "featurize.dtype=float32", argv)
    run("featurize", cfg, "pipeline.flows.run:run_featurize", opts)


if __name__ == "__main__":
    main()
