"""Release paths from config.data: defaults under the root, per-part overrides, clear errors."""
import pytest

from abaw_jax import tasks
from abaw_jax.data import release


def test_parts_resolve_under_the_root_and_can_be_moved(synthetic_affwild2, tmp_path):
    data = release.data_config()
    data.root = str(synthetic_affwild2)
    paths = release.resolve(data)
    assert paths.crops == synthetic_affwild2 / "cropped_aligned" and not paths.synthetic
    assert paths.example_file("EXPR").name == tasks.EXPR.example_file and paths.example_file("EXPR").is_file()
    assert paths.test_list(tasks.AU).is_file() and paths.reaction_list.is_file()
    assert paths.ground_truth_dir("VA") == synthetic_affwild2 / "test_set" / "ground_truth" / "VA_Estimation_Challenge"
    data.reaction_list = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="config.data.reaction_list"):
        release.resolve(data)
    data.reaction_list = ""
    (tmp_path / "bare").mkdir()
    data.root = str(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=r"config.data.annotations: .* \(set config.data.annotations"):
        release.resolve(data)
    optional = release.data_config()
    optional.root = str(tmp_path / "bare")
    for part in ("annotations", "crops", "videos", "test_lists", "examples"):
        (tmp_path / part).mkdir()
        optional[part] = str(tmp_path / part)
    paths = release.resolve(optional)
    assert paths.reaction_list is None and paths.test_ground_truth is None
