"""What every job's command line shares: ``--config FILE``, ``key=value`` overrides, ``-v``,
the log file, and starting (or joining) Ray."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import ray
from pydantic import BaseModel

from pipeline.flows import preflight, visibility
from pipeline.runs import logs
from pipeline.runs.storage import submitter_dir
from pipeline.settings import ConfigError, labelled, load_config, storage_env

log = logging.getLogger("pipeline.jobs")
# PIPELINE_OVERRIDES_TRAIN (_TUNE, _DEMO, ...): key=value ... applied after the command line's
EXTRA_OVERRIDES = "PIPELINE_OVERRIDES"


@dataclass(frozen=True)
class Options:
    """How a job runs, as opposed to what it computes (the config)."""

    verbose: bool = False
    dashboard: bool = False


def parse(
    doc: str, kind: type[BaseModel], example: str, argv=None, flags: dict[str, str] | None = None
) -> tuple[BaseModel, Options]:
    """``--config FILE [--FLAG VALUE ...] [-v] [--dashboard] [key=value ...]`` -> (validated
    ``kind``, options); ``flags`` maps each ``--FLAG VALUE`` to the override ``KEY=VALUE`` it is
    shorthand for."""
    flags = flags or {}
    origin = submitter_dir()
    if origin is not None:  # a submitted job: relative paths mean what they mean to the user
        os.chdir(origin)
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help=f"YAML file with {kind.__name__} fields")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show everything on the console: Ray's own output and debug lines",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="start the Ray dashboard with a new local Ray instance (~1 s and ~270 MiB more; "
        "a running cluster has its own)",
    )
    for flag, key in flags.items():
        parser.add_argument(f"--{flag}", help=f"same as {key}=VALUE")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    args = parser.parse_intermixed_args(argv)
    opts = Options(args.verbose, args.dashboard)
    shorthand = [
        f"{k}={getattr(args, f)}" for f, k in flags.items() if getattr(args, f) is not None
    ]
    # after the command line's: the docs-command tests shrink long runs with it
    job = kind.__name__.removesuffix("Config").removesuffix("Job").upper()
    extra = shlex.split(os.environ.get(f"{EXTRA_OVERRIDES}_{job}", ""))
    try:
        cfg = load_config(kind, args.config, args.overrides + shorthand + extra)
    except ConfigError as e:
        _refuse(e, opts)
    if args.config:  # runs start with the config's name: runs/train/train_flowers-1a2b...
        cfg = labelled(cfg, Path(args.config).stem)
    return cfg, opts


def run(job: str, cfg: BaseModel, flow: str, opts: Options = Options(), ray_: bool = True):
    """Check ``cfg`` (:mod:`pipeline.flows.preflight`), log to
    ``<output root>/logs/<job>-<time>.log``, start or join Ray (unless ``ray_`` is false), run
    ``flow(cfg)``; ``flow`` is ``"module:function"``, imported while the checks run and Ray starts,
    and given the network the checks built."""
    function = _Import(flow)
    env = storage_env(getattr(cfg, "storage_options", {}))  # the benchmarks' configs have none
    os.environ.update(env)  # before the checks: they may look at s3:// paths
    try:
        net = preflight.check(cfg)  # built once: the flow edits it
    except ConfigError as e:
        # the interpreter must not end under a thread that is inside torch's or Ray's native
        # imports: C++ aborts the process ("terminate called"), exit status -6 instead of 2
        function.join()
        _refuse(e, opts)
    path = logs.setup(_log_file(job, cfg.output_root()), opts.verbose, divert_stderr=True)
    log.info("%s: full log in %s", job, path)
    if ray_:
        start_ray(cfg.ray_address, opts, env)
        try:
            visibility.check_visible(cfg)  # a cluster of several machines: shared paths only
        except ConfigError as e:
            function.join()  # as above: no exit while the flow's imports run
            _refuse(e, opts)
    try:
        result = function.get()(cfg) if net is None else function.get()(cfg, net)
    except ConfigError as e:  # found only when the flow met it (a named run's settings)
        _refuse(e, opts)
    # The collector's last pass over torch's and Ray's objects at exit takes ~1 s (measured:
    # `import torchvision` exits in 1.2 s, frozen in 0.2 s); the process ends right after this.
    gc.freeze()
    return result


def _refuse(error: ConfigError, opts: Options) -> NoReturn:
    """A config that cannot work: one line and exit status 2 (argparse's for bad usage), before
    any work started (or, for a named run's settings, before any training); ``-v`` shows the
    traceback instead."""
    if opts.verbose:
        raise error
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)


class _Import(threading.Thread):
    """Import ``"module:function"`` in the background. A flow's imports (torch, torchvision,
    Ray Train: ~3 s) and starting a local Ray (~3 s, mostly waiting on its processes) overlap;
    Ray stays on the main thread, where it installs its signal handlers."""

    def __init__(self, target: str):
        super().__init__(name="import-flow", daemon=True)
        self.module, _, self.name = target.partition(":")
        self.value: Callable | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = getattr(importlib.import_module(self.module), self.name)
        except BaseException as e:  # re-raised on the main thread by get()
            self.error = e

    def get(self) -> Callable:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def start_ray(address: str | None, opts: Options = Options(), env: dict | None = None) -> None:
    """Join ``address`` (default: RAY_ADDRESS, a running local cluster, else a new local
    instance, without a dashboard unless asked: it lives only as long as the job). Workers of
    a new local instance inherit this process's environment, the job's log file among it; the
    training loops append their records to it (:func:`pipeline.runs.logs.worker_setup`); ``env``
    (the storage options' variables) is given to the job's workers on a running cluster too.
    Workers' console output reaches this console only with ``verbose``."""
    # No runtime_env unless storage options must reach workers of a running cluster: one
    # starts every worker of the job fresh, not from Ray's prestarted pool (measured: the
    # first batch of a pass 2 s later). include_dashboard only applies to a new instance.
    runtime_env = {"env_vars": env} if env else None
    ray.init(
        address=address,
        log_to_driver=opts.verbose,
        include_dashboard=opts.dashboard,
        runtime_env=runtime_env,
    )


def _log_file(job: str, root: str) -> Path:
    if "://" in root and not root.startswith("file://"):
        root = "runs"  # object storage: the log stays on this machine
    return (
        Path(root.removeprefix("file://")) / "logs" / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    )
