import pytest

from pipeline import sources


def test_generated_dataset_is_deterministic(tmp_path):
    sources.generate_shapes(tmp_path / "a", per_class=3, size=32, seed=1)
    sources.generate_shapes(tmp_path / "b", per_class=3, size=32, seed=1)
    paths_a, labels, classes = sources.folder_items(tmp_path / "a")
    paths_b, _, _ = sources.folder_items(tmp_path / "b")
    assert classes == sorted(sources.SHAPES) and len(paths_a) == 15
    assert labels == [i // 3 for i in range(15)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths_a, paths_b))


def test_folder_without_classes_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="<class>/<image>"):
        sources.folder_items(tmp_path)
