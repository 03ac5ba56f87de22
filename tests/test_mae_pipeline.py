"""Tests for the grain MAE pipeline: augmentation semantics, sharding, determinism, resume, skips."""

import io
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.stats
import torch
from PIL import Image
from skimage import data as skdata

from abaw_jax.data import face_shards, mae_pipeline
from abaw_jax.torch_compat import import_torchvision

import_torchvision()
from torchvision import transforms  # noqa: E402  (needs import_torchvision first)
from torchvision.transforms import functional as tvf  # noqa: E402


def _jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _face_records(count: int) -> list[dict]:
    """JPEG crops of the astronaut of varied sizes and positions, with ids."""
    astronaut = skdata.astronaut()
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        height, width = rng.integers(60, 200, size=2)
        top, left = rng.integers(0, 512 - 200, size=2)
        records.append(
            {"image": _jpeg(astronaut[top : top + height, left : left + width]), "id": f"astro/{i:03d}.jpg".encode()}
        )
    return records


def _colour_records(count: int) -> list[dict]:
    """Solid-colour JPEGs whose red channel (10 * index) identifies the record after any crop/flip."""
    return [
        {"image": _jpeg(np.full((48, 40, 3), (10 * i, 128, 255 - 10 * i), np.uint8)), "id": f"colour/{i}"}
        for i in range(count)
    ]


def _colour_indices(images: np.ndarray) -> list[int]:
    return [int(round(image[..., 0].mean() / 10)) for image in images]


def _loader(source, **overrides) -> grain.DataLoader:
    kwargs = dict(
        global_batch_size=4,
        image_size=32,
        seed=7,
        num_epochs=None,
        worker_count=0,
        shard_options=grain.sharding.NoSharding(),
    )
    kwargs.update(overrides)
    return mae_pipeline.make_mae_loader(source, **kwargs)


def _take(iterator, count: int) -> list[np.ndarray]:
    return [next(iterator)["image"] for _ in range(count)]


def test_batches_are_uint8_of_the_local_batch_size():
    loader = _loader(
        _face_records(10),
        global_batch_size=6,
        image_size=24,
        num_epochs=1,
        shard_options=grain.sharding.ShardOptions(0, 2, drop_remainder=True),
    )
    batches = list(loader)
    assert len(batches) == 1  # 5 records in this shard, batches of 3, remainder dropped.
    assert set(batches[0]) == {"image"}
    assert batches[0]["image"].shape == (3, 24, 24, 3) and batches[0]["image"].dtype == np.uint8


def test_crop_boxes_stay_within_the_scale_and_ratio_ranges():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, height, width = mae_pipeline.random_resized_crop_box(200, 300, rng)
        assert 0 <= top and top + height <= 200 and 0 <= left and left + width <= 300
        # Rounding the sides to whole pixels moves area and aspect by at most about one pixel's worth.
        assert 0.2 * 0.98 <= height * width / (200 * 300) <= 1.0
        assert 3 / 4 * 0.98 <= width / height <= 4 / 3 * 1.02


def test_crop_box_distribution_matches_torchvision():
    ours = np.array(
        [mae_pipeline.random_resized_crop_box(180, 240, np.random.default_rng(seed)) for seed in range(2000)]
    )
    torch.manual_seed(0)
    image = Image.new("RGB", (240, 180))
    theirs = np.array([transforms.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(2000)])
    for column in range(4):  # top, left, height, width
        assert scipy.stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > 0.001


@pytest.mark.parametrize("height, width", [(10, 1000), (1000, 10)])
def test_crop_box_fallback_matches_torchvision(height, width):
    # No crop with area >= 20% and aspect within [3/4, 4/3] fits such shapes, so both use the
    # deterministic centred fallback.
    ours = mae_pipeline.random_resized_crop_box(height, width, np.random.default_rng(0))
    theirs = transforms.RandomResizedCrop.get_params(Image.new("RGB", (width, height)), [0.2, 1.0], [3 / 4, 4 / 3])
    assert ours == tuple(theirs)


@pytest.mark.parametrize("side, image_size, tolerance", [(110, 160, 2.0), (300, 224, 1.5), (1024, 224, 4.0)])
def test_resized_crop_matches_torchvision_bicubic(side, image_size, tolerance):
    pixels = np.asarray(Image.fromarray(skdata.astronaut()).resize((side, side), Image.BICUBIC))
    encoded = _jpeg(pixels)
    decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
    for seed in range(3):
        ours = mae_pipeline.decode_random_resized_crop(encoded, np.random.default_rng(seed), image_size=image_size)
        rng = np.random.default_rng(seed)
        top, left, height, width = mae_pipeline.random_resized_crop_box(side, side, rng)
        reference = tvf.resized_crop(
            decoded, top, left, height, width, [image_size, image_size], transforms.InterpolationMode.BICUBIC
        )
        if rng.random() < 0.5:
            reference = tvf.hflip(reference)
        assert np.abs(ours.astype(np.float64) - np.asarray(reference)).mean() < tolerance


def test_flip_mirrors_about_half_of_the_images():
    pixels = skdata.astronaut()[100:228, 150:278]
    encoded = _jpeg(pixels)
    whole = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB").resize((64, 64), Image.BICUBIC))
    flipped = 0
    for seed in range(40):
        out = mae_pipeline.decode_random_resized_crop(
            encoded, np.random.default_rng(seed), image_size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0)
        )
        plain_error = np.abs(out.astype(int) - whole).mean()
        mirror_error = np.abs(out.astype(int) - whole[:, ::-1]).mean()
        assert min(plain_error, mirror_error) < 2.0 < max(plain_error, mirror_error)
        flipped += mirror_error < plain_error
    assert 10 <= flipped <= 30


def test_normalize_images_matches_torchvision_normalize():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    normalize = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mae_pipeline.IMAGENET_MEAN, mae_pipeline.IMAGENET_STD)]
    )
    expected = np.stack([normalize(Image.fromarray(image)).permute(1, 2, 0).numpy() for image in images])
    ours = mae_pipeline.normalize_images(jnp.asarray(images))
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)
    bf16 = mae_pipeline.normalize_images(jnp.asarray(images), jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), expected, atol=0.02)


def test_same_seed_same_batches_other_seed_or_epoch_other_batches():
    records = _face_records(8)
    first = _take(iter(_loader(records)), 4)
    again = _take(iter(_loader(records)), 4)
    other_seed = _take(iter(_loader(records, seed=8)), 2)
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert not np.array_equal(first[0], other_seed[0])
    # Batches 0-1 are epoch 1 and 2-3 epoch 2: new crops and a new order.
    assert not np.array_equal(np.stack(first[:2]), np.stack(first[2:]))


def test_process_shards_are_disjoint_and_cover_the_records():
    records = _colour_records(24)
    seen = []
    for shard_index in range(2):
        loader = _loader(
            records,
            global_batch_size=8,
            num_epochs=1,
            shard_options=grain.sharding.ShardOptions(shard_index, 2, drop_remainder=True),
        )
        seen.append([i for batch in loader for i in _colour_indices(batch["image"])])
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(24))


def test_process_slices_assemble_the_single_process_batches():
    # Multi-host runs must see the same global batches, in the same order, as a single host.
    records = _face_records(24)
    single = list(_loader(records, global_batch_size=8, num_epochs=1))
    slices = [
        list(
            _loader(
                records,
                global_batch_size=8,
                num_epochs=1,
                shard_options=grain.sharding.ShardOptions(p, 2, drop_remainder=True),
            )
        )
        for p in range(2)
    ]
    assert len(single) == len(slices[0]) == len(slices[1]) == 3
    for t, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([slices[0][t]["image"], slices[1][t]["image"]]), batch["image"])


@pytest.mark.parametrize("worker_count", [0, 2])
def test_restored_iterator_continues_exactly_mid_epoch(worker_count):
    records = _face_records(16)
    loader_args = dict(worker_count=worker_count, num_epochs=3)
    iterator = iter(_loader(records, **loader_args))
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 6)  # Runs on into the second epoch.

    restored = iter(_loader(records, **loader_args))
    restored.set_state(state)
    np.testing.assert_array_equal(np.stack(_take(restored, 6)), np.stack(expected))


def test_iterator_state_round_trips_through_orbax_checkpoint_manager(tmp_path):
    records = _face_records(12)
    iterator = iter(_loader(records))
    _take(iterator, 2)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    state = {"step": np.array(2, np.int32)}
    manager.save(
        2, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator))
    )
    manager.wait_until_finished()
    expected = _take(iterator, 3)

    restored_iterator = iter(_loader(records))
    restored = manager.restore(
        2,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(restored_iterator)
        ),
    )
    assert int(restored["state"]["step"]) == 2
    np.testing.assert_array_equal(np.stack(_take(restored_iterator, 3)), np.stack(expected))
    manager.close()


@pytest.mark.parametrize("worker_count", [0, 2])
def test_corrupt_records_are_skipped_and_counted(worker_count, tmp_path):
    records = _colour_records(20)
    corrupt = {3: records[3]["image"][:200], 11: b"\x00not an image", 17: b""}
    for index, payload in corrupt.items():
        records[index] = {"image": payload, "id": f"colour/{index}"}
    skipped_dir = tmp_path / "skipped"
    loader = _loader(
        records, global_batch_size=1, num_epochs=1, worker_count=worker_count, skipped_records_dir=skipped_dir
    )
    seen = [i for batch in loader for i in _colour_indices(batch["image"])]
    assert sorted(seen) == sorted(set(range(20)) - set(corrupt))
    assert sorted(mae_pipeline.read_skipped_records(skipped_dir)) == sorted(f"colour/{index}" for index in corrupt)


def test_loader_reads_face_shards(tmp_path):
    roots = tmp_path / "faces"
    roots.mkdir()
    for i, record in enumerate(_face_records(6)):
        (roots / f"{i}.jpg").write_bytes(record["image"])
    face_shards.build_face_shards(
        {"astro": roots}, tmp_path / "tfds", quality_filter=face_shards.QualityFilter(min_face_size=32)
    )
    source = face_shards.load_face_source(tmp_path / "tfds")
    batches = list(_loader(source, global_batch_size=3, num_epochs=1))
    assert len(batches) == len(source) // 3
    assert batches[0]["image"].shape == (3, 32, 32, 3)


def test_global_batch_must_divide_by_the_shard_count():
    with pytest.raises(ValueError, match="does not divide"):
        _loader(
            _colour_records(4),
            global_batch_size=5,
            shard_options=grain.sharding.ShardOptions(0, 2, drop_remainder=True),
        )


@pytest.mark.parametrize("side", [100, 1000])
def test_exif_orientation_is_ignored_like_pil(side):
    pixels = np.asarray(Image.fromarray(skdata.astronaut()).resize((side, side // 2)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees on display.
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    encoded = buffer.getvalue()
    assert mae_pipeline.encoded_image_shape(encoded) == (side // 2, side)
    reduction = 2 if side == 1000 else 1
    assert mae_pipeline.decode_rgb(encoded, reduction).shape == (side // 2 // reduction, side // reduction, 3)
    out = mae_pipeline.decode_random_resized_crop(encoded, np.random.default_rng(0), image_size=64)
    assert out.shape == (64, 64, 3)


# A whole run in a child process, so that its exit (where Python's resource tracker reports) is observed.
_WORKER_RUN = """
import sys
import grain
import numpy as np
from absl import app
from PIL import Image
import io
from abaw_jax.data import mae_pipeline


def jpeg(i):
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 40, 3), 10 * i, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def main(argv):
    source = [{"image": jpeg(i), "id": str(i)} for i in range(24)]
    loader = mae_pipeline.make_mae_loader(source, global_batch_size=4, image_size=16, seed=0, num_epochs=1,
                                          worker_count=2, shard_options=grain.sharding.NoSharding())
    print(sum(1 for _ in loader), "batches")


if __name__ == "__main__":
    app.run(main)
"""


def test_a_run_with_workers_leaves_no_shared_memory_behind(tmp_path):
    """grain frees the batches' shared memory on a background thread that never ran at exit: Python's resource
    tracker then printed `There appear to be N leaked shared_memory objects` after every run."""
    script = tmp_path / "run.py"
    script.write_text(_WORKER_RUN)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "batches"]
    assert "leaked shared_memory" not in result.stderr and "resource_tracker" not in result.stderr, result.stderr
