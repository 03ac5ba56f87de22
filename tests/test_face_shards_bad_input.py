"""Bad inputs to the face-shard builder: nothing silently skipped, saturated or trained on with grey rows.

Each test builds shards from a small tree with one kind of trouble and reads the stored records or the
quality report back. Later data builders add their cases here in the same style.
"""

import io
import json
import os
import pathlib
import shutil

import cv2
import grain
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from abaw_jax.data import face_shards, mae_pipeline

NO_BLUR = face_shards.QualityFilter(min_face_size=64, min_blur_var=0.0)


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return encoded.tobytes()


def _face() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[20:240, 150:330, ::-1])  # BGR for cv2


def _records(data_dir) -> dict[str, bytes]:
    source = face_shards.load_face_source(data_dir)
    return {source[i]["id"].decode(): source[i]["image"] for i in range(len(source))}


def _report(data_dir) -> dict:
    path = face_shards.dataset_dir(data_dir) / face_shards.REPORT_FILENAME
    return json.loads(path.read_text())


def test_images_in_symlinked_folders_are_scanned_once(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "people"
    elsewhere.mkdir(parents=True)
    (elsewhere / "face.jpg").write_bytes(_jpeg(_face()))
    root = tmp_path / "root"
    (root / "own").mkdir(parents=True)
    (root / "own" / "mirror.jpg").write_bytes(_jpeg(_face()[:, ::-1].copy()))
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "own" / "loop")  # a link back up the tree must not loop or double-count
    os.symlink(tmp_path / "gone.jpg", root / "dangling.jpg")

    report = face_shards.build_face_shards({"r": root}, tmp_path / "shards", quality_filter=NO_BLUR)
    assert set(_records(tmp_path / "shards")) == {"r/linked/face.jpg", "r/own/mirror.jpg"}
    assert report.dropped["corrupt"] == ["r/dangling.jpg"]
    assert report.scanned == 3


def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    grey8 = cv2.cvtColor(_face(), cv2.COLOR_BGR2GRAY)
    root = tmp_path / "root"
    root.mkdir()
    cv2.imwrite(str(root / "deep.png"), grey8.astype(np.uint16) * 257)  # the same picture in 16 bits
    report = face_shards.build_face_shards({"r": root}, tmp_path / "shards")  # default blur filter on
    assert report.kept == 1, report.summary()
    stored = np.asarray(Image.open(io.BytesIO(_records(tmp_path / "shards")["r/deep.png"])).convert("L"))
    assert np.abs(stored.astype(int) - grey8.astype(int)).mean() < 2.0  # JPEG re-encoding only
    assert stored.max() < 255 or grey8.max() == 255


def test_jpeg_cut_short_but_ending_in_eoi_is_corrupt(tmp_path):
    whole = _jpeg(_face())
    cut = whole[: len(whole) // 2] + b"\xff\xd9"
    # What the issue saw: PIL decodes it without complaint, the lower part flat grey.
    decoded = np.asarray(Image.open(io.BytesIO(cut)).convert("RGB"))
    assert (decoded[-8:] == 128).all()

    root = tmp_path / "root"
    root.mkdir()
    (root / "whole.jpg").write_bytes(whole)
    (root / "cut.jpg").write_bytes(cut)
    report = face_shards.build_face_shards({"r": root}, tmp_path / "shards", quality_filter=NO_BLUR)
    assert report.dropped["corrupt"] == ["r/cut.jpg"]
    assert set(_records(tmp_path / "shards")) == {"r/whole.jpg"}
    assert _report(tmp_path / "shards")["drop_counts"]["corrupt"] == 1
    with pytest.raises(face_shards.CorruptImageError, match="premature end of data segment"):
        face_shards.decode_grey(cut)


def test_tree_where_nothing_passes_is_an_error_naming_the_counts(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.jpg").write_bytes(_jpeg(_face()[:20, :20].copy()))
    with pytest.raises(
        face_shards.NoFacesError,
        match=r"No image passed the quality filter \(scanned 1, kept 0.*"
        r"too_small=1",
    ):
        face_shards.build_face_shards({"r": root}, tmp_path / "shards")


def test_image_root_that_is_a_file(tmp_path):
    (tmp_path / "file.jpg").write_bytes(_jpeg(_face()))
    with pytest.raises(
        NotADirectoryError, match=f"Image root r={tmp_path / 'file.jpg'} must be a directory, found a file there"
    ):
        face_shards.build_face_shards({"r": tmp_path / "file.jpg"}, tmp_path / "shards")


def test_sixteen_bit_helper_matches_a_numpy_reference():
    values = np.array([[0, 257, 32896], [65535, 128, 65280]], np.uint16)
    converted = np.asarray(face_shards.eight_bit(Image.fromarray(values)))
    np.testing.assert_array_equal(converted, np.round(values / 257.0).astype(np.uint8))


@pytest.fixture(scope="module")
def built_shards(tmp_path_factory):
    """Shards of 40 distinct faces (each a few KB, so the file spans several 64 KB Riegeli blocks)."""
    tmp = tmp_path_factory.mktemp("shards")
    root = tmp / "faces"
    root.mkdir()
    face = _face()
    for i in range(40):
        (root / f"{i:02d}.jpg").write_bytes(_jpeg(np.roll(face, 5 * i, axis=1)))
    face_shards.build_face_shards({"r": root}, tmp / "shards", quality_filter=NO_BLUR)
    return tmp / "shards"


def _damaged_copy(built_shards, tmp_path, damage) -> pathlib.Path:
    shutil.copytree(built_shards, tmp_path / "shards")
    [shard] = face_shards.dataset_dir(tmp_path / "shards").glob("*.array_record-*")
    data = bytearray(shard.read_bytes())
    shard.write_bytes(damage(data))
    return shard


@pytest.mark.parametrize(
    "damage", [lambda data: bytes(data[: len(data) // 2]), lambda data: b""], ids=["truncated", "empty"]
)
def test_damaged_shard_is_named_when_loaded(built_shards, tmp_path, damage):
    """Was a raw RuntimeError about Riegeli chunks from inside a grain batch, naming no file."""
    shard = _damaged_copy(built_shards, tmp_path, damage)
    with pytest.raises(
        face_shards.DamagedShardError,
        match=rf"^{shard}: damaged face shard, record 0 .*"
        r"data_prep\.build_face_shards --image_roots=r=",
    ):
        face_shards.load_face_source(tmp_path / "shards")


def _flip_a_byte_mid_file(data: bytearray) -> bytes:
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("worker_count", [0, 2])
def test_damage_inside_a_shard_is_named_when_read_by_the_loader(built_shards, tmp_path, worker_count):
    shard = _damaged_copy(built_shards, tmp_path, _flip_a_byte_mid_file)
    source = face_shards.load_face_source(tmp_path / "shards")  # the shard's first record still reads
    loader = mae_pipeline.make_mae_loader(
        source,
        global_batch_size=4,
        image_size=32,
        seed=0,
        num_epochs=1,
        worker_count=worker_count,
        shard_options=grain.sharding.NoSharding(),
    )
    with pytest.raises(face_shards.DamagedShardError, match=rf"^{shard}: damaged face shard, record \d+ "):
        for _ in loader:
            pass
