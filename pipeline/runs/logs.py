"""Logging: a quiet console for people, the whole story in a file.

The library logs through :mod:`logging` (``pipeline.*`` loggers) and never prints. A job calls
:func:`setup` once: the console then shows the project's own lines (one progress line per
stage, one summary per step) and problems from anything else; the log file gets every record
at debug level, Ray's included. Ray's own console output (Ray Data progress blocks, Tune's
tables, worker lines) is routed to the file. :class:`Progress` is the one progress line a stage
keeps: rewritten in place on a terminal, written now and then when not.

Example:

    >>> from pipeline.runs.logs import Progress
    >>> progress = Progress("featurize", total=10)
    >>> progress.update(10, "3.0 images/s")
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

import ray.data  # configures its loggers on import; setup() reroutes them after

log = logging.getLogger("pipeline")

LOG_FILE_ENV = "PIPELINE_LOG_FILE"  # the job's log file, once setup() has chosen it
NOISY = (
    "ray",
    "ray.data",
    "ray.tune",
    "ray.train",
    "filelock",
    "urllib3",
    "fsspec",
    # object storage: a debug line per request and per event hook
    "botocore",
    "aiobotocore",
    "s3fs",
    "gcsfs",
    "asyncio",
)
FILE_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


class _Console(logging.StreamHandler):
    """The project's lines and everyone's errors; a record marked ``transient`` (a progress
    line) is rewritten in place on a terminal and left out elsewhere."""

    def __init__(self, stream, verbose: bool):
        super().__init__(stream)
        self.verbose, self.tty = verbose, stream.isatty()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        ours = record.name == "pipeline" or record.name.startswith("pipeline.")
        return record.levelno >= (logging.INFO if ours else logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        transient = getattr(record, "transient", False)
        if transient and not self.tty:
            return  # Progress writes a plain line now and then instead
        text = self.format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        if self.tty:  # overwrite the last transient line; keep this one unless it is transient
            text = "\r" + text + "\033[K"
        self.stream.write(text + ("" if transient else "\n"))
        self.stream.flush()


def setup(
    log_file: str | Path | None = None,
    verbose: bool = False,
    stream=None,
    divert_stderr: bool = False,
) -> Path | None:
    """Route every record to ``log_file`` (debug level) and the console (see module doc);
    returns the log file's path. ``verbose`` shows everything on the console.
    ``divert_stderr`` (jobs, when not verbose): whatever else writes to this process's stderr
    (Ray's C++ core, warnings, tracebacks) goes to the log file, and an uncaught error leaves
    one line on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, (_Console, logging.FileHandler)):
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG)
    path = None
    if log_file is not None:
        path = Path(log_file).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
        os.environ[LOG_FILE_ENV] = str(path)
        if divert_stderr and not verbose:
            stream = stream or _divert_stderr(path)
    root.addHandler(_Console(stream or sys.stderr, verbose))
    logging.captureWarnings(True)
    quiet_libraries()
    return path


def _divert_stderr(path: Path):
    """Point file descriptor 2 at the log file; return a stream on the original stderr for
    the console, and make an uncaught error print one line there (its traceback goes to the
    file)."""
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w", buffering=1, errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    default = sys.excepthook

    def excepthook(kind, value, tb):
        default(kind, value, tb)  # the traceback, into the log file
        console.write(f"error: {kind.__name__}: {value}\n(traceback in {path}; -v shows it here)\n")

    sys.excepthook = excepthook
    return console


def quiet_libraries() -> None:
    """Send Ray's (and a few libraries') records through the root handlers instead of their own
    console handlers, and turn off Ray Data's progress blocks (a stage keeps its own line)."""
    for name in NOISY:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is not logging.FileHandler and isinstance(
                handler, logging.StreamHandler
            ):
                logger.removeHandler(handler)
        logger.propagate = True
        # Ray Data logs its scheduler's state at debug level several times a second;
        # botocore logs every request
        logger.setLevel(logging.INFO)
    ray.data.DataContext.get_current().enable_progress_bars = False


def current_file() -> str | None:
    """This job's log file (set by :func:`setup`), for the Ray workers that log to pass on."""
    return os.environ.get(LOG_FILE_ENV)


def worker_setup(path: str | None) -> None:
    """In a Ray worker that logs (a training loop, a sweep trial): this project's records go
    (also) to the job's log file ``path`` when this node sees it, and Ray's own records stay at
    warnings. Called when the loop starts, after Ray Train has configured the worker's
    logging; the path travels with the work, not in the environment, so a cluster the job
    joined gets it too."""
    root = logging.getLogger()
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    ours = any(getattr(h, "baseFilename", None) == path for h in root.handlers)
    if path and not ours and Path(path).parent.is_dir():
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def captured_stdout(name: str):
    """Print-based output of a library call (Ray Tune's tables) goes to the log file as debug
    records of logger ``name`` (not ours: the console leaves them out)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            yield
        finally:
            text = buffer.getvalue().strip()
            if text:
                logging.getLogger(name).info("%s", text)  # the console shows only ours


class Progress:
    """One progress line for a stage. On a terminal it is rewritten in place at most every
    ``tick`` seconds; otherwise a plain line goes to the console at most every ``every``
    seconds, so logs stay short (the stage's summary line follows it). Every update is in the
    log file."""

    def __init__(
        self,
        stage: str,
        total: int | None = None,
        every: float = 30.0,
        tick: float = 0.5,
        logger: logging.Logger | None = None,
    ):
        self.stage, self.total, self.every, self.tick = stage, total, every, tick
        self.log = logger or log
        self.start = time.perf_counter()
        self._shown = self._ticked = self.start

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        line = f"{self.stage}: {done}" + (f"/{self.total}" if self.total is not None else "")
        line += f" {detail}" if detail else ""
        if now - self._shown >= self.every:
            self._shown = self._ticked = now
            self.log.info(line)
        elif now - self._ticked >= self.tick:
            self._ticked = now
            self.log.info(line, extra={"transient": True})
        else:
            self.log.debug(line)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
