"""Run names and the ``latest`` pointer every storage keeps.

A run's directory is ``<storage>/<name>``; the default name starts with a readable label (the
config file's stem, else the model's name) and ends with a hash of everything that changes the
result, so re-running resumes and changing anything starts afresh. After each finished run,
``<storage>/latest`` points at it: a relative symlink on a local disk (so ``ls``, TensorBoard and
``jobs.predict model=runs/train/latest/model`` all follow it), a small file holding the run's
name on object storage, which :func:`resolve_latest` reads.

Example:

    >>> from pipeline.runs.storage import mark_latest, resolve_latest
    >>> _ = (tmp / "runs" / "flowers-1a2b" / "model").mkdir(parents=True)
    >>> mark_latest(str(tmp / "runs"), "flowers-1a2b")
    >>> (tmp / "runs" / "latest" / "model").is_dir()
    True
    >>> mark_latest("memory://bucket/runs", "flowers-1a2b")
    >>> resolve_latest("memory://bucket/runs/latest/model")
    'memory://bucket/runs/flowers-1a2b/model'
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import fsspec

LATEST = "latest"


def is_local(uri: str) -> bool:
    """A path on this machine's filesystem (or a ``file://`` URI), not object storage."""
    return "://" not in uri or uri.startswith("file://")


SUBMIT_DIR = "PIPELINE_SUBMIT_DIR"  # set by cluster/local.sh submit: the submitter's directory


def submitter_dir() -> Path | None:
    """Where a job submitted with ``ray job submit --working-dir .`` was submitted from, when
    this machine has it: the job runs in Ray's temporary copy of the tree, where relative paths
    would not mean what they mean to the user. ``$PIPELINE_SUBMIT_DIR`` when set
    (``cluster/local.sh submit`` sets it), else the checkout this project is installed from in
    editable mode (``pip install -e .``) when its content is exactly what was uploaded (Ray's
    own package hash of it is the working directory's name); ``None`` outside a submitted job
    or when neither is here (a cluster elsewhere: give absolute paths or URIs)."""
    runtime_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env")
    uploaded = (runtime_env or {}).get("working_dir")
    if not uploaded:
        return None
    given = os.environ.get(SUBMIT_DIR)
    if given:
        return Path(given) if Path(given).is_dir() else None
    origin = editable_origin()
    if origin is None or not origin.is_dir() or origin.resolve() == Path.cwd().resolve():
        return None
    # Ray's own naming of an uploaded directory (a pinned Ray: this private helper is stable
    # within the version pyproject allows)
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import get_uri_for_directory

    excludes = ray_constants.get_runtime_env_default_excludes() + list(
        runtime_env.get("excludes") or []
    )
    ours = get_uri_for_directory(str(origin), include_gitignore=True, excludes=excludes)
    return origin if ours.rsplit("/", 1)[-1] == uploaded.rsplit("/", 1)[-1] else None


def editable_origin() -> Path | None:
    """The checkout this project is installed from with ``pip install -e .`` (``None``: a
    regular install)."""
    try:
        text = importlib.metadata.distribution("ray-transfer").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    url = json.loads(text or "{}")
    if not url.get("dir_info", {}).get("editable") or not url.get("url", "").startswith("file://"):
        return None
    return Path(url["url"].removeprefix("file://"))


def current_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``uri``'s filesystem and path, with what this process cached of its listings dropped:
    s3fs and gcsfs keep them, and Ray's workers write there while the driver waits. All of
    them: ``invalidate_cache(path)`` drops a path and its parents, not what is below it."""
    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    return fs, path


def checkpoint_uri(checkpoint) -> str:
    """A Ray ``Checkpoint``'s directory as a URI (its ``path`` drops the scheme of object
    storage: ``bucket/run/checkpoint_000001``)."""
    scheme = {"s3": "s3://", "gcs": "gs://"}.get(checkpoint.filesystem.type_name, "")
    return scheme + checkpoint.path if scheme else checkpoint.path


def absolute_uri(uri: str) -> str:
    """A local path made absolute against the driver's directory (URIs unchanged): Ray's
    workers run in the directory their node started in, not the job's."""
    return uri if "://" in uri else os.path.abspath(uri)


def default_name(label: str, settings) -> str:
    """``<label>-<12 hex digits of a hash of settings>`` (settings: anything JSON can hold)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"{readable}-{digest[:12]}"


def mark_latest(storage: str, name: str) -> None:
    """Point ``<storage>/latest`` at the run ``name`` (a directory in ``storage``)."""
    if is_local(storage):
        root = Path(storage.removeprefix("file://"))
        temporary = root / f".{LATEST}-{os.getpid()}"
        try:
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(name, target_is_directory=True)
            os.replace(temporary, root / LATEST)  # atomic: a reader never sees no pointer
            return
        except OSError:  # no symlinks on this filesystem: the pointer file below works anywhere
            temporary.unlink(missing_ok=True)
    fs, root = fsspec.core.url_to_fs(storage)
    fs.pipe_file(f"{root}/{LATEST}", name.encode())


def resolve_latest(uri: str) -> str:
    """``uri`` with a ``latest`` part that is a pointer file replaced by the run it names
    (a symlink needs no resolving)."""
    parts = uri.split("/")
    for i, part in enumerate(parts):
        if part != LATEST:
            continue
        fs, path = fsspec.core.url_to_fs("/".join(parts[: i + 1]))
        if fs.isfile(path):
            parts[i] = fs.cat_file(path).decode().strip()
    return "/".join(parts)
