"""The newcomer's demo: edit the packaged pretrained network, featurize once, fit a head.

    python -m jobs.demo [--config FILE] [--data DIR] [key=value ...]
"""

import argparse

from pipeline.config import DemoConfig, load_config
from pipeline.demo import run_demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help="YAML file with DemoConfig fields")
    parser.add_argument("--data", help="folder-per-class images (default: generated shapes)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. epochs=10 fine_tune.lr=0.01")
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"data={args.data}"] if args.data else [])
    run_demo(load_config(DemoConfig, args.config, overrides))


if __name__ == "__main__":
    main()
