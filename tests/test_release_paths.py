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


def test_videos_are_optional_until_audio_features_need_them(synthetic_affwild2, tmp_path):
    """A release downloaded without its videos serves every stage but audio extraction, which says what is missing."""
    root = tmp_path / "no_videos"
    root.mkdir()
    for part in ("annotations", "cropped_aligned", "test_set", "reaction_videos.txt"):
        (root / part).symlink_to(synthetic_affwild2 / part)
    data = release.data_config()
    data.root = str(root)
    paths = release.resolve(data)
    assert paths.videos is None and paths.crops == root / "cropped_aligned"
    release.require_videos(paths, ())
    with pytest.raises(
        FileNotFoundError,
        match=rf"config.data.videos: {root} has no videos/ folder, and the audio "
        r"sets \['logmel_mfcc'\]",
    ):
        release.require_videos(paths, ("logmel_mfcc",))
    data.videos = str(synthetic_affwild2 / "videos")
    release.require_videos(release.resolve(data), ("logmel_mfcc",))
    data.videos = str(tmp_path / "elsewhere")  # a folder named explicitly must exist
    with pytest.raises(FileNotFoundError, match="config.data.videos: .*elsewhere does not exist"):
        release.resolve(data)
