"""The newcomer's demo, offline, on the packaged EfficientNet-Lite0 ImageNet weights: generate a
dataset, featurize once, fit a head, sweep unfreeze depth x learning rate, compare scratch vs
frozen vs fine-tuned, write one report (a few minutes on 2 CPUs).

    python -m jobs.demo [--data DIR] [--config FILE] [-v] [key=value ...]
    python -m jobs.demo --data path/to/images image_size=224     # images/<class>/<file>
"""

from jobs._cli import parse, run
from pipeline.settings import DemoConfig


def main(argv=None) -> None:
    cfg, opts = parse(
        __doc__, DemoConfig, "steps=[fit] train.epochs=5", argv, flags={"data": "data"}
    )
    run("demo", cfg, "pipeline.flows.demo:run_demo", opts)


if __name__ == "__main__":
    main()
