"""What every job's command line shares: ``--config FILE`` plus ``key=value`` overrides."""

import argparse

from pydantic import BaseModel

from pipeline.config import load_config


def config_from_args(doc: str, kind: type[BaseModel], example: str, argv=None,
                     flags: tuple[str, ...] = ()) -> BaseModel:
    """Parse ``--config FILE [--FLAG VALUE ...] [key=value ...]`` into a validated ``kind``;
    each of ``flags`` is shorthand for the ``FLAG=VALUE`` override."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help=f"YAML file with {kind.__name__} fields")
    for flag in flags:
        parser.add_argument(f"--{flag}", help=f"same as {flag}=VALUE")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    args = parser.parse_args(argv)
    shorthand = [f"{f}={getattr(args, f)}" for f in flags if getattr(args, f) is not None]
    return load_config(kind, args.config, args.overrides + shorthand)
