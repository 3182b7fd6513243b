"""One peer of ``jobs.benchmark featurize``, as a process of its own: what a user would write
instead of the pipeline, on the benchmark's images (see pipeline.benchmarks.peers).

python -m jobs.peer plain|plain-onnx|ray-data --manifest images.csv --out DIR [--model ...]
"""

import argparse
from pathlib import Path

from pipeline.benchmarks import peers


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=sorted(peers.PEERS))
    parser.add_argument("--manifest", required=True, help="CSV of path,label (jobs.benchmark's)")
    parser.add_argument("--out", required=True, help="where the features are written")
    parser.add_argument("--model", default="torchvision:mobilenet_v2")
    parser.add_argument("--weights")
    parser.add_argument("--cut", default="flatten")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (plain)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    common = (Path(args.manifest), args.model, args.weights, args.cut, Path(args.out))
    if args.peer == "ray-data":
        import ray

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        images = peers.ray_data_recipe(*common, args.batch_size)
    else:
        engine = "onnxruntime" if args.peer == "plain-onnx" else "torch"
        images = peers.plain_loop(
            *common, args.batch_size, args.workers, engine=engine, device=args.device
        )
    print(f"peer {args.peer}: {images} images")


if __name__ == "__main__":
    main()
