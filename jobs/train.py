"""Fit a network's trainable part (featurizing first when the feature set is not cached).

python -m jobs.train --config jobs/configs/train_hymenoptera.yaml [-v] [key=value ...]
ray job submit --working-dir . -- python -m jobs.train --config FILE [key=value ...]
"""

from jobs._cli import parse, run
from pipeline.settings import TrainJobConfig


def main(argv=None) -> None:
    cfg, opts = parse(__doc__, TrainJobConfig, "train.epochs=5", argv)
    run("train", cfg, "pipeline.flows.run:run_train", opts)


if __name__ == "__main__":
    main()
