"""Performance, measured: the pipeline against a plain PyTorch baseline in the same run.

python -m jobs.benchmark featurize [--images N] [--data DIR] [key=value ...]
python -m jobs.benchmark featurize-memory [--images N] [factor=8]
python -m jobs.benchmark fit [--images N] [cut=flatten] [head=classifier.1]
python -m jobs.benchmark sweep [--images N] [trials=8] [epochs=5]
python -m jobs.benchmark listing [--images N] [factor=20]
python -m jobs.benchmark scale [--images N] [epochs=1]
python -m jobs.benchmark shards [--images N] [factor=100]
"""

import sys

from jobs._cli import parse, run
from pipeline.benchmarks.run import BenchmarkConfig


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    what, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("", argv)
    cfg, opts = parse(
        __doc__,
        BenchmarkConfig,
        "images=512",
        [f"what={what}", *rest],
        flags={f: f for f in ("images", "data", "model", "device")},
    )
    run("benchmark", cfg, "pipeline.benchmarks.run:run_benchmark", opts, ray_=cfg.needs_ray())


if __name__ == "__main__":
    main()
