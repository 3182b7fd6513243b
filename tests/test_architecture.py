"""The shape of the code, checked: packages that are the layers (lint-imports), short modules,
one home per name, every package saying what it owns and what it may import."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import REPO, SHARED

PIPELINE = REPO / "pipeline"
MODULES = sorted(PIPELINE.rglob("*.py"))
MAX_LINES = 400


def test_the_import_contracts_hold():
    """The layers contract and the private-names rule (pyproject's [tool.importlinter])."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_every_package_says_what_it_owns_and_may_import():
    packages = [p.parent for p in PIPELINE.glob("*/__init__.py")]
    assert len(packages) >= 4
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        assert "May import" in doc or package.name == "benchmarks", package


def test_no_module_is_longer_than_the_limit():
    long = {
        str(p.relative_to(REPO)): n
        for p in MODULES
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_each_function_and_class_name_has_one_home():
    homes = defaultdict(list)
    for path in MODULES:
        if path.name == "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                homes[node.name].append(str(path.relative_to(REPO)))
    twice = {name: where for name, where in homes.items() if len(where) > 1}
    assert not twice, f"one name, several modules: {twice}"


@pytest.mark.skipif(not (SHARED / "tools" / "import_cycles.py").exists(), reason="no ../shared")
def test_no_import_cycles():
    done = subprocess.run(
        [sys.executable, str(SHARED / "tools" / "import_cycles.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "\n0 import cycles" in f"\n{done.stdout}", done.stdout
