"""Tests for the Aff-Wild2 readers: parsing, masking, alignment, clips, folds and list files."""

import pathlib

import numpy as np
import pytest

from abaw_jax.data import affwild2

AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
VA_HEADER = "valence,arousal"


def _write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _make_crops(crops_root: pathlib.Path, name: str, frames) -> None:
    (crops_root / name).mkdir(parents=True, exist_ok=True)
    for k in frames:
        (crops_root / name / f"{k:05d}.jpg").write_bytes(b"")


def test_round_trip_on_synthetic_release(synthetic_affwild2):
    root = synthetic_affwild2
    for task, folder in (
        ("AU", "AU_Detection_Challenge"),
        ("EXPR", "EXPR_Recognition_Challenge"),
        ("VA", "VA_Estimation_Challenge"),
    ):
        videos = affwild2.load_task(root, task, root / "cropped_aligned")
        files = sorted((root / "annotations" / folder).glob("*/*.txt"))
        assert sorted(videos) == sorted(f.stem for f in files)
        for path in files:
            video = videos[path.stem]
            assert video.split == path.parent.name and video.task == task
            raw = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
            on_disk = sorted(int(p.stem) for p in (root / "cropped_aligned" / path.stem).glob("*.jpg"))
            expected_frames = [k for k in on_disk if k <= len(raw)]
            np.testing.assert_array_equal(video.frames, expected_frames)
            assert video.num_rows == len(raw)
            assert [p.name for p in video.crop_paths] == [f"{k:05d}.jpg" for k in expected_frames]
            assert all(p.is_file() for p in video.crop_paths)
            np.testing.assert_allclose(video.labels.reshape(len(video), -1), raw[video.frames - 1], atol=1e-6)
            marker = {"AU": -1, "EXPR": -1, "VA": -5}[task]
            np.testing.assert_array_equal(video.valid, ~(raw[video.frames - 1] == marker).any(axis=1))


def test_invalid_rows_are_masked_and_missing_crops_excluded(tmp_path):
    ann = _write(
        tmp_path / "ann" / "VA_Estimation_Challenge" / "Train_Set" / "clip_left.txt",
        [VA_HEADER, "0.1,0.2", "-5,-5", "0.3,-0.4", "0.5,0.5", "-0.2,0.9"],
    )
    _make_crops(tmp_path / "crops", "clip_left", [1, 2, 4, 5, 6, 7])
    video = affwild2.load_video_labels(ann, "VA", tmp_path / "crops", "Train_Set")
    np.testing.assert_array_equal(video.frames, [1, 2, 4, 5])
    np.testing.assert_array_equal(video.valid, [True, False, True, True])
    np.testing.assert_allclose(video.labels, [[0.1, 0.2], [-5, -5], [0.5, 0.5], [-0.2, 0.9]])
    assert video.num_rows == 5 and video.source_video == "clip"


def test_both_expr_folder_names_and_nested_root(tmp_path):
    for folder in ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"):
        root = tmp_path / folder
        _write(root / "Annotations_release" / folder / "Validation_Set" / "102.txt", [EXPR_HEADER, "4", "-1", "7"])
        _make_crops(root / "crops", "102", [1, 2, 3])
        video = affwild2.load_task(root, "EXPR", root / "crops")["102"]
        np.testing.assert_array_equal(video.labels, [4, -1, 7])
        np.testing.assert_array_equal(video.valid, [True, False, True])
        assert video.split == "Validation_Set"


@pytest.mark.parametrize(
    "task, lines, bad_line, found",
    [
        ("AU", ["AU1,AU2", "0,1"], 1, "AU1,AU2"),
        ("AU", [AU_HEADER, ",".join(["0"] * 12), ",".join(["0"] * 11)], 3, ",".join(["0"] * 11)),
        ("AU", [AU_HEADER, ",".join(["2"] + ["0"] * 11)], 2, ",".join(["2"] + ["0"] * 11)),
        ("EXPR", [EXPR_HEADER, "3", "8"], 3, "8"),
        ("EXPR", [EXPR_HEADER, "happy"], 2, "happy"),
        ("EXPR", [EXPR_HEADER, "1", "", "2"], 3, ""),
        ("VA", ["Valence,Arousal", "0.1,0.1"], 1, "Valence,Arousal"),
        ("VA", [VA_HEADER, "0.1,0.2", "1.5,0.0"], 3, "1.5,0.0"),
        ("VA", [VA_HEADER, "0.1"], 2, "0.1"),
    ],
)
def test_malformed_files_name_file_line_expected_and_found(tmp_path, task, lines, bad_line, found):
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(affwild2.AnnotationError) as error:
        affwild2.parse_annotation_file(path, task)
    message = str(error.value)
    assert str(path) in message and f":{bad_line}:" in message
    assert "expected" in message and repr(found) in message
    assert error.value.line == bad_line


def test_missing_crop_folder_names_the_annotation(tmp_path):
    ann = _write(tmp_path / "EXPR_Recognition_Challenge" / "Train_Set" / "v.txt", [EXPR_HEADER, "1"])
    with pytest.raises(FileNotFoundError, match="v.txt"):
        affwild2.load_task(tmp_path, "EXPR", tmp_path / "crops")
    assert ann.exists()


@pytest.mark.parametrize(
    "num_frames, clip_len, stride", [(250, 100, None), (100, 100, None), (7, 100, None), (230, 100, 50), (1, 4, 1)]
)
def test_clips_cover_every_frame_and_mask_only_padding(num_frames, clip_len, stride):
    clips = affwild2.make_clips(num_frames, clip_len, stride)
    stride = stride or clip_len
    assert clips.index.shape == clips.mask.shape and clips.index.shape[1] == clip_len
    starts = clips.index[:, 0]
    np.testing.assert_array_equal(starts, np.arange(len(starts)) * stride)
    covered = np.zeros(num_frames, bool)
    covered[clips.index[clips.mask]] = True
    assert covered.all()
    positions = starts[:, None] + np.arange(clip_len)
    np.testing.assert_array_equal(clips.mask, positions < num_frames)
    assert positions[-1, -1] >= num_frames - 1 and (len(starts) == 1 or positions[-2, -1] < num_frames - 1)
    values = np.arange(num_frames, dtype=np.float32)[:, None] + 1
    gathered = clips.gather(values)
    np.testing.assert_array_equal(gathered[..., 0], np.where(clips.mask, positions + 1, 0))


def test_kfold_splits_are_seeded_disjoint_covering_and_keep_pairs_together():
    names = [f"v{i}" for i in range(11)] + ["p1_left", "p1_right", "p2_left", "p2_right", "p3_left"]
    folds = affwild2.kfold_splits(names, num_folds=5, seed=3)
    assert folds == affwild2.kfold_splits(list(reversed(names)), num_folds=5, seed=3)
    assert folds != affwild2.kfold_splits(names, num_folds=5, seed=4)
    assert len(folds) == 5
    validation = [set(f.validation) for f in folds]
    assert set().union(*validation) == set(names)
    assert sum(len(v) for v in validation) == len(names)
    for fold, val in zip(folds, validation):
        assert set(fold.train) == set(names) - val and val
        for pair in ("p1", "p2"):
            assert (f"{pair}_left" in val) == (f"{pair}_right" in val)
    sizes = [len({affwild2.source_video(n) for n in v}) for v in validation]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="5 folds"):
        affwild2.kfold_splits(["a", "b_left", "b_right"], num_folds=5)


def test_video_lists_and_reaction_lookup(tmp_path, synthetic_affwild2):
    path = _write(tmp_path / "reaction.txt", ["10-60-1280x720", "", "102"])
    reaction = affwild2.read_video_list(path)
    assert reaction == ("10-60-1280x720", "102")
    assert affwild2.is_listed("10-60-1280x720_right", reaction) and not affwild2.is_listed("103", reaction)
    with pytest.raises(affwild2.AnnotationError, match=r"dup\.txt:3:.*each name once"):
        affwild2.read_video_list(_write(tmp_path / "dup.txt", ["a", "b", "a"]))
    with pytest.raises(affwild2.AnnotationError, match=r"sp\.txt:1:"):
        affwild2.read_video_list(_write(tmp_path / "sp.txt", ["a b"]))
    lists = synthetic_affwild2 / "test_set" / "names_of_videos_in_each_test_set"
    expr_test = affwild2.read_video_list(lists / "EXPR_Recognition_Challenge_test_set_release.txt")
    assert expr_test and all((synthetic_affwild2 / "cropped_aligned" / n).is_dir() for n in expr_test)


def test_media_lookup_maps_pairs_to_one_video(tmp_path, synthetic_affwild2):
    videos = synthetic_affwild2 / "videos"
    pair = next(p.name[: -len("_left")] for p in (synthetic_affwild2 / "cropped_aligned").glob("*_left"))
    assert affwild2.find_video_file(videos, pair + "_left") == affwild2.find_video_file(videos, pair + "_right")
    assert affwild2.find_video_file(videos, pair + "_left") == videos / f"{pair}.mp4"
    (tmp_path / "7.avi").write_bytes(b"")
    assert affwild2.find_video_file(tmp_path, "7") == tmp_path / "7.avi"
    with pytest.raises(FileNotFoundError, match="nothere"):
        affwild2.find_video_file(tmp_path, "nothere")


def test_submission_templates(tmp_path, synthetic_affwild2):
    folder = synthetic_affwild2 / "test_set" / "prediction_files_format"
    lists = synthetic_affwild2 / "test_set" / "names_of_videos_in_each_test_set"
    for task, example, listing in (
        ("AU", "AU", "AU_Detection_Challenge"),
        ("EXPR", "Expr", "EXPR_Recognition_Challenge"),
        ("VA", "VA", "VA_Estimation_Challenge"),
    ):
        path = folder / f"CVPR_6th_ABAW_{example}_test_set_example.txt"
        template = affwild2.read_submission_template(path, task)
        assert template.header == path.read_text().splitlines()[0]
        assert list(dict.fromkeys(template.names)) == list(
            affwild2.read_video_list(lists / f"{listing}_test_set_release.txt")
        )
        for name in set(template.names):
            frames = template.frames_of(name)
            np.testing.assert_array_equal(frames, np.arange(1, len(frames) + 1))
            assert len(frames) >= len(list((synthetic_affwild2 / "cropped_aligned" / name).glob("*.jpg")))
    bad = _write(tmp_path / "bad.txt", ["image_location,valence,arousal", "v/00001.jpg,0,0", "v/1.jpg,0,0"])
    with pytest.raises(affwild2.AnnotationError, match=r"bad\.txt:3:.*'v/1\.jpg,0,0'"):
        affwild2.read_submission_template(bad, "VA")
    with pytest.raises(affwild2.AnnotationError, match=r"bad\.txt:1:"):
        affwild2.read_submission_template(bad, "EXPR")
