"""The fine-tuning input pipeline on the synthetic release: splits, invalid labels, order, padding, sharding."""

import pathlib
import shutil

import grain
import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.data import affwild2, device_images, frame_pipeline, mae_pipeline

NO_SHARDING = grain.sharding.NoSharding()


def _frames(root: pathlib.Path, task: str, split: str = "official"):
    return frame_pipeline.affwild2_frames(root / "annotations", root / "cropped_aligned", task, split=split)


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_official_split_is_train_set_then_validation_set(synthetic_affwild2, task):
    train, evaluation = _frames(synthetic_affwild2, task)
    for frames, split in ((train, "Train_Set"), (evaluation, "Validation_Set")):
        videos = affwild2.load_task(
            synthetic_affwild2 / "annotations", task, synthetic_affwild2 / "cropped_aligned", (split,)
        )
        assert list(dict.fromkeys(frames.names)) == list(videos)
        np.testing.assert_array_equal(frames.labels, np.concatenate([v.labels for v in videos.values()]))
        np.testing.assert_array_equal(frames.valid, np.concatenate([v.valid for v in videos.values()]))
        assert not frames.valid.all() and frames.valid.any()  # the fixture has invalid rows on both sides


def test_fold_splits_are_the_video_level_kfold_over_both_splits(synthetic_affwild2):
    videos = affwild2.load_task(synthetic_affwild2 / "annotations", "VA", synthetic_affwild2 / "cropped_aligned")
    folds = affwild2.kfold_splits(videos, 5, seed=0)
    seen = set()
    for k in range(5):
        train, evaluation = _frames(synthetic_affwild2, "VA", f"fold{k + 1}")
        assert set(evaluation.names) == set(folds[k].validation)
        assert set(train.names) == set(folds[k].train)
        assert not {affwild2.source_video(n) for n in train.names} & {
            affwild2.source_video(n) for n in evaluation.names
        }
        seen |= set(evaluation.names)
    assert seen == set(videos)
    with pytest.raises(ValueError, match="fold6"):
        _frames(synthetic_affwild2, "VA", "fold6")


@pytest.mark.parametrize("task", tasks.TASK_NAMES)
def test_training_batches_hold_every_valid_frame_and_no_invalid_one(synthetic_affwild2, task):
    train, _ = _frames(synthetic_affwild2, task)
    valid = train.valid_only()
    # One global batch of exactly the valid frames: the first epoch, so each valid frame once.
    loader = frame_pipeline.make_train_loader(
        train, global_batch_size=len(valid), seed=0, worker_count=0, shard_options=NO_SHARDING
    )
    batch = next(iter(loader))
    side = device_images.stored_size(valid.paths)
    assert batch["image"].shape == (len(valid), side, side, 3) and batch["image"].dtype == np.uint8
    # Every box lies inside its crop (the synthetic crops fill the buffer) and both flips occur.
    top, left, height, width = batch["box"].T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= side).all() and (left + width <= side).all()
    assert (height > 0).all() and (width > 0).all() and 0 < batch["flip"].sum() < len(valid)
    assert batch["mask"].all()
    labels = batch["label"].reshape(len(valid), -1)
    assert not (labels == tasks.get_task(task).invalid_marker).any()
    expected = valid.labels.reshape(len(valid), -1)
    np.testing.assert_array_equal(labels[np.lexsort(labels.T)], expected[np.lexsort(expected.T)])


@pytest.mark.parametrize("worker_count", [0, 2])
def test_eval_batches_are_every_frame_once_at_stored_size_and_padded(synthetic_affwild2, worker_count):
    _, evaluation = _frames(synthetic_affwild2, "EXPR")
    batch_size = 64
    loader = frame_pipeline.make_eval_loader(
        evaluation, global_batch_size=batch_size, worker_count=worker_count, shard_options=NO_SHARDING
    )
    batches = list(loader)
    assert len(batches) == frame_pipeline.num_eval_batches(len(evaluation), batch_size, worker_count)
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(np.sort(index), np.arange(len(index)))
    if worker_count == 0:
        np.testing.assert_array_equal(index, np.arange(len(index)))
    order = np.argsort(index)
    images, boxes, labels, masks = (
        np.concatenate([b[k] for b in batches])[order] for k in ("image", "box", "label", "mask")
    )
    count = len(evaluation)
    assert len(images) >= count and not masks[count:].any()
    np.testing.assert_array_equal(masks[:count], evaluation.valid)
    np.testing.assert_array_equal(labels[:count], evaluation.labels)
    for i in (0, count // 2, count - 1):
        expected = mae_pipeline.decode_rgb(pathlib.Path(evaluation.paths[i]).read_bytes())
        np.testing.assert_array_equal(images[i], expected)  # the stored crop, decoded and nothing else
        np.testing.assert_array_equal(boxes[i], [0, 0, *expected.shape[:2]])


def test_eval_process_slices_assemble_the_single_process_batches(synthetic_affwild2):
    _, evaluation = _frames(synthetic_affwild2, "VA")
    kwargs = dict(global_batch_size=32, worker_count=0)
    single = list(frame_pipeline.make_eval_loader(evaluation, shard_options=NO_SHARDING, **kwargs))
    shards = [
        list(
            frame_pipeline.make_eval_loader(
                evaluation, shard_options=grain.sharding.ShardOptions(shard_index=p, shard_count=2), **kwargs
            )
        )
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for t, batch in enumerate(single):
        for key in ("image", "box", "label", "mask", "index"):
            np.testing.assert_array_equal(np.concatenate([shards[0][t][key], shards[1][t][key]]), batch[key])


# A JPEG cut short, and one cut short with its end-of-image marker appended (OpenCV decodes that one with a grey
# band where the data ends, so only the strict check catches it).
CORRUPTIONS = {"truncated": lambda data: data[:300], "truncated_with_eoi": lambda data: data[:300] + b"\xff\xd9"}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_eval_crop_is_masked_and_counted(synthetic_affwild2, tmp_path, corruption):
    _, evaluation = _frames(synthetic_affwild2, "EXPR")
    frames = evaluation.select(np.flatnonzero(evaluation.valid)[:6])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(CORRUPTIONS[corruption](pathlib.Path(frames.paths[2]).read_bytes()))
    paths = frames.paths.copy()
    paths[2] = str(broken)
    frames = frame_pipeline.LabelledFrames(frames.task, paths, frames.labels, frames.valid, frames.names, frames.frames)
    batch = next(
        iter(
            frame_pipeline.make_eval_loader(
                frames, global_batch_size=6, worker_count=0, shard_options=NO_SHARDING, skipped_records_dir=tmp_path
            )
        )
    )
    np.testing.assert_array_equal(batch["mask"], [True, True, False, True, True, True])
    assert mae_pipeline.read_skipped_records(tmp_path) == [str(broken)]


def test_training_skips_and_counts_a_crop_cut_short_with_an_end_marker(synthetic_affwild2, tmp_path):
    train, _ = _frames(synthetic_affwild2, "EXPR")
    frames = train.select(np.flatnonzero(train.valid)[:5])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(CORRUPTIONS["truncated_with_eoi"](pathlib.Path(frames.paths[0]).read_bytes()))
    frames = frame_pipeline.LabelledFrames(
        frames.task,
        np.array([str(broken)] + list(frames.paths[1:]), object),
        frames.labels,
        frames.valid,
        frames.names,
        frames.frames,
    )
    loader = frame_pipeline.make_train_loader(
        frames, global_batch_size=4, seed=0, worker_count=0, shard_options=NO_SHARDING, skipped_records_dir=tmp_path
    )
    batches = iter(loader)
    next(batches), next(batches)  # 8 reads of 5 frames: every frame, the broken one included, read at least once
    assert set(mae_pipeline.read_skipped_records(tmp_path)) == {str(broken)}


def _write_class_tree(root: pathlib.Path, crops: list[pathlib.Path], folders: dict[str, int]) -> None:
    for folder, count in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            shutil.copy(crops[i], root / folder / f"{i}.jpg")


def test_image_folder_per_class_reads_label_names(synthetic_affwild2, tmp_path):
    crops = sorted((synthetic_affwild2 / "cropped_aligned").rglob("*.jpg"))[:4]
    _write_class_tree(tmp_path / "tree", crops, {"happiness": 2, "ANGER": 3, "Other": 1, "neutral": 4})
    frames = frame_pipeline.image_folder_frames(tmp_path / "tree")
    expected = {"happiness": 4, "ANGER": 1, "Other": 7, "neutral": 0}
    assert len(frames) == 10 and frames.valid.all()
    for name, label in zip(frames.names, frames.labels):
        assert label == expected[name]
    batch = next(
        iter(
            frame_pipeline.make_train_loader(
                frames, global_batch_size=10, seed=0, worker_count=0, shard_options=NO_SHARDING
            )
        )
    )
    assert sorted(batch["label"]) == sorted(frames.labels)


def test_image_folder_errors_name_what_is_wrong(synthetic_affwild2, tmp_path):
    crops = sorted((synthetic_affwild2 / "cropped_aligned").rglob("*.jpg"))[:2]
    _write_class_tree(tmp_path / "unknown", crops, {"happy": 1, "Sadness": 1, "contempt": 1})
    with pytest.raises(ValueError, match=r"\['contempt', 'happy'\] are not EXPR classes"):
        frame_pipeline.image_folder_frames(tmp_path / "unknown")
    _write_class_tree(tmp_path / "empty", crops, {"Fear": 0, "Neutral": 0})
    with pytest.raises(ValueError, match="no images"):
        frame_pipeline.image_folder_frames(tmp_path / "empty")
    with pytest.raises(ValueError, match="expression labels"):
        frame_pipeline.image_folder_frames(tmp_path / "unknown", "AU")


def test_numbered_image_folders_are_refused_not_read_as_expr_indices(synthetic_affwild2, tmp_path):
    # The shared AffectNet class-folder copies number folders by AffectNet code (1 = Happy): read as EXPR indices
    # (1 = Anger) every image would be silently mislabelled.
    crops = sorted((synthetic_affwild2 / "cropped_aligned").rglob("*.jpg"))[:1]
    _write_class_tree(tmp_path / "affectnet_copy", crops, {"0": 1, "1": 1, "Sadness": 1})
    with pytest.raises(ValueError) as caught:
        frame_pipeline.image_folder_frames(tmp_path / "affectnet_copy")
    message = str(caught.value)
    assert "\n" not in message
    assert "class folders ['0', '1'] are numbers" in message
    assert "rename them to the EXPR labels ['Neutral', 'Anger'," in message


def test_training_draws_the_host_augmentation_box_and_flip(synthetic_affwild2):
    train, _ = _frames(synthetic_affwild2, "AU")
    path = pathlib.Path(train.valid_only().paths[0])
    side = device_images.stored_size([path])
    draw = frame_pipeline.DecodeAndDrawCrop(side, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_prob=0.5)
    record = {"image": path.read_bytes(), "label": train.labels[0], "mask": np.True_, "id": str(path)}
    for seed in range(20):
        out = draw.random_map(record, np.random.default_rng(seed))
        # The same generator through the host augmentation's own draws: box first, then one uniform for the flip.
        rng = np.random.default_rng(seed)
        box = mae_pipeline.random_resized_crop_box(side, side, rng, (0.2, 1.0), (3 / 4, 4 / 3))
        np.testing.assert_array_equal(out["box"], box)
        assert out["flip"] == (rng.random() < 0.5)
        np.testing.assert_array_equal(out["image"], mae_pipeline.decode_rgb(record["image"]))
