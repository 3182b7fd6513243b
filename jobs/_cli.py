"""What every job's command line shares: ``--config FILE`` plus ``key=value`` overrides."""

import argparse

from pydantic import BaseModel

from pipeline.config import load_config


def config_from_args(doc: str, kind: type[BaseModel], example: str, argv=None) -> BaseModel:
    """Parse ``--config FILE [key=value ...]`` into a validated ``kind``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help=f"YAML file with {kind.__name__} fields")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    args = parser.parse_args(argv)
    return load_config(kind, args.config, args.overrides)
