"""Classify images with an exported network; writes Parquet (id, source, class, probabilities).

python -m jobs.predict --config jobs/configs/predict_hymenoptera.yaml [-v] [key=value ...]
ray job submit --working-dir . -- python -m jobs.predict --config FILE [key=value ...]
"""

from jobs._cli import parse, run
from pipeline.settings import PredictJobConfig


def main(argv=None) -> None:
    cfg, opts = parse(__doc__, PredictJobConfig, "model=runs/train/x/model", argv)
    run("predict", cfg, "pipeline.flows.run:run_predict", opts)


if __name__ == "__main__":
    main()
