"""The generated dataset: seeded, byte-identical, hard with clutter."""

from pathlib import Path

from pipeline.data.shapes import SHAPES, generate_shapes


def test_generated_dataset_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert generate_shapes(tmp_path / name, per_class=3, size=32, seed=1) == list(SHAPES)
    files = sorted((tmp_path / "a").rglob("*.png"))
    assert len(files) == 15 and sorted({f.parent.name for f in files}) == sorted(SHAPES)
    assert all(
        f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
        for f in files
    )


def test_cluttered_shapes_are_seeded_and_differ_from_plain(tmp_path: Path):
    for name in ("a", "b"):
        generate_shapes(tmp_path / name, per_class=2, size=48, seed=3, clutter=8)
    generate_shapes(tmp_path / "plain", per_class=2, size=48, seed=3)
    for path in (tmp_path / "a").rglob("*.png"):
        relative = path.relative_to(tmp_path / "a")
        assert path.read_bytes() == (tmp_path / "b" / relative).read_bytes()
        assert path.read_bytes() != (tmp_path / "plain" / relative).read_bytes()
