"""What every job's command line shares: ``--config FILE``, ``key=value`` overrides, ``-v``,
the log file, and starting (or joining) Ray."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import ray
from pydantic import BaseModel

from pipeline import logs
from pipeline.config import load_config

log = logging.getLogger("pipeline.jobs")


def parse(
    doc: str, kind: type[BaseModel], example: str, argv=None, flags: tuple[str, ...] = ()
) -> tuple[BaseModel, bool]:
    """``--config FILE [--FLAG VALUE ...] [-v] [key=value ...]`` -> (validated ``kind``,
    verbose); each of ``flags`` is shorthand for the ``FLAG=VALUE`` override."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help=f"YAML file with {kind.__name__} fields")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything on the console: Ray's own output and debug lines",
    )
    for flag in flags:
        parser.add_argument(f"--{flag}", help=f"same as {flag}=VALUE")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    args = parser.parse_intermixed_args(argv)
    shorthand = [f"{f}={getattr(args, f)}" for f in flags if getattr(args, f) is not None]
    return load_config(kind, args.config, args.overrides + shorthand), args.verbose


def run(job: str, cfg: BaseModel, flow: Callable, verbose: bool = False):
    """Log to ``<output root>/logs/<job>-<time>.log``, start or join Ray, run ``flow(cfg)``."""
    path = logs.setup(_log_file(job, cfg.output_root()), verbose, divert_stderr=True)
    log.info("%s: full log in %s", job, path)
    start_ray(cfg.ray_address, verbose)
    return flow(cfg)


def start_ray(address: str | None, verbose: bool = False) -> None:
    """Join ``address`` (default: RAY_ADDRESS, a running local cluster, else a new local
    instance). Workers route their logging through :func:`pipeline.logs.worker_setup`; their
    console output reaches this console only with ``verbose``."""
    env = {
        "env_vars": {logs.LOG_FILE_ENV: os.environ.get(logs.LOG_FILE_ENV, "")},
        "worker_process_setup_hook": "pipeline.logs.worker_setup",
    }
    ray.init(address=address, log_to_driver=verbose, runtime_env=env)


def _log_file(job: str, root: str) -> Path:
    if "://" in root and not root.startswith("file://"):
        root = "runs"  # object storage: the log stays on this machine
    return (
        Path(root.removeprefix("file://")) / "logs" / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    )
