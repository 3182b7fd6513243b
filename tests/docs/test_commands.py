"""Every shell command printed in README.md, the docs and the shipped configs' headers runs as
printed, from a copy of the project beside a small ``../shared`` (a few images of each real
data set, the real weights), so a doc that lies fails here.

A block is one fenced ``bash`` block, or one config's header commands; they run in the order of
:data:`FILES`, in one copy, each with ``bash -e`` and the project's environment on ``PATH``
(what ``. .venv/bin/activate`` gives). ``my_images`` is a small folder per class, as the docs
describe it. Jobs join this session's Ray (``RAY_ADDRESS``) instead of starting their own,
except on the local cluster the cluster page starts. A block preceded by
``<!-- docs-commands: skip (reason) -->`` is not run (it needs what the suite cannot have: a
cloud, Docker); the README's test command is CI's own and is left out of its block. Trainings,
sweeps and demos run fewer epochs and trials (``PIPELINE_OVERRIDES_<JOB>``, applied after the
command line's).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, SHARED, free_port
from pipeline.data.featureset import FeatureSet
from pipeline.data.shapes import generate_shapes

FILES = [
    "README.md",
    "docs/index.md",
    "docs/own-images.md",
    "docs/demo.md",
    "docs/train.md",
    "docs/sweeps.md",
    "docs/data-at-scale.md",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "jobs" / "configs").glob("*.yaml")),
    "docs/cluster.md",
]
SKIP = re.compile(r"<!-- docs-commands: skip \((.+?)\) -->\s*$")
CI_COMMAND = '.venv/bin/pip install -q -e ".[test]" && .venv/bin/python -m pytest'
SHRINK = {  # PIPELINE_OVERRIDES_<JOB>: fewer epochs and trials, after the command line's
    "DEMO": "images_per_class=8 train.epochs=2 sweep.space.epochs=2 sweep.compare.epochs=1",
    "TRAIN": "train.epochs=2",
    "TUNE": "sweep.num_samples=1 sweep.space.epochs=2 sweep.compare.epochs=1",
}


@dataclass(frozen=True)
class Block:
    where: str  # file:line
    text: str
    skip: str = ""

    def __str__(self) -> str:
        return self.where


def markdown_blocks(path: str) -> list[Block]:
    lines = (REPO / path).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() in ("```bash", "```sh"):
            end = lines.index("```", i + 1)
            marker = SKIP.search(lines[i - 1]) if i else None
            text = "\n".join(lines[i + 1 : end]) + "\n"
            skip = marker.group(1) if marker else ""
            # CI's own command (.ci/run runs it) is the one left out: pytest inside pytest
            text = "".join(line for line in text.splitlines(True) if CI_COMMAND not in line)
            blocks.append(Block(f"{path}:{i + 1}", text, skip))
            i = end
        i += 1
    return blocks


def config_block(path: str) -> list[Block]:
    """A config's header commands: its leading comment lines indented as commands."""
    commands = []
    for line in (REPO / path).read_text().splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.startswith("   ") and (commands and commands[-1].endswith("\\")):
            commands[-1] += "\n" + body.strip()
        elif re.match(r" {3}(python|cluster/|ray |\.venv/)", body):
            commands.append(body.strip())
    return [Block(f"{path}:header", "\n".join(commands) + "\n")] if commands else []


def all_blocks() -> list[Block]:
    found, seen = [], set()
    for path in FILES:
        blocks = config_block(path) if path.endswith(".yaml") else markdown_blocks(path)
        for block in blocks:
            if block.text not in seen:  # the same block printed twice runs once
                seen.add(block.text)
                found.append(block)
    return found


BLOCKS = all_blocks()


def test_the_blocks_are_found_and_every_skip_says_why():
    assert len(BLOCKS) >= 15
    skipped = [b for b in BLOCKS if b.skip]
    assert len(skipped) <= 3, [str(b) for b in skipped]
    assert all("python" in b.text or "cluster/" in b.text for b in BLOCKS)


# ---------------------------------------------------------------------------- the copy


def _small_shared(root: Path) -> None:
    """``../shared`` for the copy: 8 images per class of flowers128, 8 per class and split of
    hymenoptera (its gif and its file name with a space kept), the real weights."""
    (root / "weights").mkdir(parents=True)
    for name in ("mobilenet_v2_imagenet.pth",):
        os.symlink(SHARED / "weights" / name, root / "weights" / name)
    flowers, hymenoptera = SHARED / "data" / "flowers128", SHARED / "data" / "hymenoptera"
    folders = [(c, root / "data" / "flowers128" / c.name) for c in flowers.iterdir()]
    folders += [
        (c, root / "data" / "hymenoptera" / s.name / c.name)
        for s in hymenoptera.iterdir()
        for c in s.iterdir()
    ]
    for source, target in folders:
        target.mkdir(parents=True)
        files = sorted(source.iterdir())
        keep = files[:8] + [f for f in files[8:] if " " in f.name or f.suffix == ".gif"]
        for f in keep:
            os.symlink(f, target / f.name)


def _copy_project(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _venv(project: Path) -> None:
    """A ``.venv`` of its own (the README's commands install into it) that sees this
    environment's packages through a ``.pth`` file, so installing downloads nothing but the
    build backend (setuptools, into pip's isolated build environment)."""
    subprocess.run(["python3.11", "-m", "venv", str(project / ".venv")], check=True)
    site = next((project / ".venv" / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "parent.pth").write_text("\n".join(ours) + "\n")
    # the console script pip would have put beside it (cluster/local.sh runs `ray`)
    ray = project / ".venv" / "bin" / "ray"
    ray.write_text(
        f"#!{project / '.venv' / 'bin' / 'python'}\n"
        "import sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
    )
    ray.chmod(0o755)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    project = root / "project"
    _copy_project(project)
    if SHARED.exists():
        _small_shared(root / "shared")
    _venv(project)
    generate_shapes(project / "my_images", per_class=6, size=64)
    return project


def _env(project: Path, block: Block, ray_local) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{project / '.venv' / 'bin'}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(project / ".venv")
    env.pop("PYTHONPATH", None)
    env.update({f"PIPELINE_OVERRIDES_{job}": values for job, values in SHRINK.items()})
    if "cluster/local.sh" in block.text:  # a cluster of its own, on ports nothing else uses
        env.pop("RAY_ADDRESS", None)
        env.update(
            STATE=str(project / ".cluster"),
            RAY_TMP=tempfile.mkdtemp(prefix="rd", dir="/tmp"),  # Ray's socket paths: short
            NUM_CPUS="2",
            RAY_PORT=str(free_port()),
            DASHBOARD_PORT=str(free_port()),
            CLIENT_PORT=str(free_port()),
            AGENT_PORT=str(free_port()),
        )
    else:
        env["RAY_ADDRESS"] = ray_local.get_runtime_context().gcs_address
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_the_command_runs_as_printed(block, project, ray_local):
    if block.skip:
        pytest.skip(block.skip)
    if "../shared" in block.text + _configs_text(block.text) and not SHARED.exists():
        pytest.skip("needs ../shared")
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=project,
        env=_env(project, block, ray_local),
        capture_output=True,
        text=True,
        timeout=880,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block}:\n{block.text}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    for command, check in CHECKS.items():
        if command in block.text:
            check(project, output)


def _submitted_where_run_locally(project: Path, output: str) -> None:
    """A submitted job's relative paths meant the copy's files, not Ray's temporary tree."""
    assert output.count("succeeded") >= 2, output[-3000:]
    assert f"-> {project}/runs/tiny/features/" in output, output[-3000:]
    assert FeatureSet.under(str(project / "runs" / "tiny" / "features"))
    assert f"fit: model {project}/runs/train/" in output, output[-3000:]
    assert re.search(r"raysubmit_\w+\s+SUCCEEDED\s+python -m jobs.train", output), output[-3000:]
    assert "stopped" in output


def _every_shard_once(project: Path, output: str) -> None:
    """Ten shards, ten finished units, every generated image featurized once."""
    (found,) = FeatureSet.under(str(project / "runs" / "wds-features"))
    assert len(list(Path(found.uri, "_units").glob("*.json"))) == 10
    assert "10" in [line.strip() for line in output.splitlines()], output[-3000:]  # `wc -l`
    ids = found.table(columns=["id"]).column("id")
    assert len(ids) == len(set(ids.to_pylist())) == 5000


def _predicted_with_its_own_classes(project: Path, output: str) -> None:
    """The hymenoptera predictions came from the hymenoptera network (`latest` was that run):
    the images' labels are the network's classes, so there is an accuracy to print."""
    scores = re.findall(r"accuracy against the data's labels (\S+)", output)
    assert scores, output[-3000:]  # another run's network: no label is one of its classes


CHECKS = {
    "jobs/configs/predict_hymenoptera.yaml": _predicted_with_its_own_classes,
    "cluster/local.sh submit train": _submitted_where_run_locally,
    "generate_shards('runs/wds'": _every_shard_once,
}


def _configs_text(text: str) -> str:
    """The configs a block names: what it needs is in them."""
    names = re.findall(r"jobs/configs/[\w.]+\.yaml", text)
    return "".join((REPO / n).read_text() for n in names)
