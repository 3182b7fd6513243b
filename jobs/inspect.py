"""List a model's nodes before writing a config: names, output shapes, parameters, the blocks a
cut or an unfreeze depth can name, and, with --cut, the frozen set's frontier. No Ray.

python -m jobs.inspect --model torchvision:mobilenet_v2 [--weights W] [--cut NODE] [--json]
"""

import argparse
import json
import sys

from pipeline.net.builder import TransferLearning


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="zoo name, e.g. torchvision:resnet18")
    parser.add_argument("--weights", help="as model.weights (default: none; shapes need none)")
    parser.add_argument("--image-size", type=int, help="as model.image_size")
    parser.add_argument("--cut", action="append", help="freeze through NODE (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    args = parser.parse_args(argv)
    kwargs = {"image_size": args.image_size} if args.image_size else {}
    builder = TransferLearning(args.model, weights=args.weights, **kwargs)
    summary = (builder.set_feature_extractor(*args.cut) if args.cut else builder).build().summary()
    print(json.dumps(summary.to_json()) if args.json else summary.text())


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # an unknown model, weights or node (UnknownNodeError too): one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
