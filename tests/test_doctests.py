"""Every module's docstring examples run, as written, against real Ray and real files."""

import doctest
import importlib
import io

import pytest

from conftest import REPO, make_tiny_net
from pipeline.data.shapes import generate_shapes

SOURCES = sorted(
    p
    for p in (REPO / "pipeline").rglob("*.py")
    if p.stem != "__init__" or p.parent.name == "pipeline"
)
MODULES = [
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in SOURCES
]
RAY = "Example (needs a running Ray"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, request):
    module = importlib.import_module(name)
    examples = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert examples, f"{name} has no docstring example"
    generate_shapes(tmp_path / "shapes", per_class=4, size=32)
    names = {"tmp": tmp_path, "shapes": str(tmp_path / "shapes")}
    if RAY in (module.__doc__ or ""):  # the session's Ray and its tiny feature set
        names.update(
            net=make_tiny_net(), feature_set=request.getfixturevalue("tiny_features")["pool"]
        )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in examples:
        test.globs.update(names)
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()
    assert runner.tries > 0


def test_every_module_is_checked():
    assert "pipeline" in MODULES and "pipeline.benchmarks.sweep" in MODULES
