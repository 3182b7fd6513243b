"""Performance, measured: the pipeline against a plain PyTorch baseline in the same run.

    python -m jobs.benchmark featurize [--images N] [--data DIR] [--model NAME] ...
    python -m jobs.benchmark featurize-memory [--images N] [--factor 8]
    python -m jobs.benchmark fit [--images N] [--cut flatten] [--head classifier.1]
    python -m jobs.benchmark sweep [--images N] [--trials 8] [--epochs 5]
"""

import argparse
import os
from pathlib import Path

import ray

from pipeline import benchmark

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("what", choices=["featurize", "featurize-memory", "fit", "sweep"])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "flowers128",
                        help="folder per class (default ../shared/data/flowers128, else generated)")
    parser.add_argument("--model", default="torchvision:mobilenet_v2")
    parser.add_argument("--weights", default=None, help="default: ../shared mobilenet_v2 weights "
                        "when present (timing does not depend on the values)")
    parser.add_argument("--cut", default="flatten")
    parser.add_argument("--head", default="classifier.1", help="fit: the layer resized")
    parser.add_argument("--epochs", type=int, default=5, help="fit, sweep: epochs (per trial)")
    parser.add_argument("--trials", type=int, default=8, help="sweep: trials")
    parser.add_argument("--images", type=int, default=None, help="default: all (featurize), "
                        "250 (featurize-memory), 512 (fit, sweep)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="featurize-memory image size")
    args = parser.parse_args(argv)
    shared = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
    weights = args.weights or (str(shared) if args.model == "torchvision:mobilenet_v2"
                               and shared.exists() else None)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    if args.what == "featurize":
        benchmark.featurize_benchmark(args.data, args.model, weights, args.cut,
                                      args.images or 10**9, args.batch_size, args.workers,
                                      args.actors)
    elif args.what == "fit":
        benchmark.fit_benchmark(args.data, args.model, weights, args.cut, args.head,
                                args.images or 512, args.batch_size, args.workers, args.epochs)
    elif args.what == "sweep":
        benchmark.sweep_benchmark(args.data, args.model, weights, args.head, args.images or 512,
                                  args.trials, args.epochs, args.batch_size, args.workers)
    else:
        benchmark.featurize_memory_benchmark(args.model, weights, args.cut, args.images or 250,
                                             args.factor, args.size, args.batch_size)


if __name__ == "__main__":
    main()
