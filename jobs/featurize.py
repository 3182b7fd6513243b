"""Featurize images with a network's frozen prefix, one feature set per cut.

python -m jobs.featurize --config jobs/configs/featurize_flowers.yaml [-v] [key=value ...]
ray job submit --working-dir . -- python -m jobs.featurize --config FILE [key=value ...]
"""

from jobs._cli import parse, run
from pipeline.config import FeaturizeJobConfig
from pipeline.flows import run_featurize


def main(argv=None) -> None:
    cfg, verbose = parse(__doc__, FeaturizeJobConfig, "featurize.dtype=float32", argv)
    run("featurize", cfg, run_featurize, verbose)


if __name__ == "__main__":
    main()
