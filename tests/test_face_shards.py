"""Tests for the TFDS face-shard builder, its quality filter and the CLI."""

import io
import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
from skimage import data as skdata

from abaw_jax.data import face_shards


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _write(path: pathlib.Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


@pytest.fixture(name="face_tree")
def fixture_face_tree(tmp_path):
    """Two roots with sharp faces and one file per drop reason; returns (roots, kept ids, dropped)."""
    astronaut = skdata.astronaut()
    faces = {
        "a/face_0.jpg": astronaut[20:240, 150:330],
        "a/face_1.jpg": astronaut[0:300, 100:360],
        "b/face_2.jpeg": cv2.resize(astronaut[30:250, 140:330], (96, 112)),
        "b/face_3.png": astronaut[40:200, 160:300],
    }
    astro_root = tmp_path / "astro"
    for name, pixels in faces.items():
        _write(astro_root / name, _encode(pixels, "PNG" if name.endswith(".png") else "JPEG"))
    sharp = (astro_root / "a/face_0.jpg").read_bytes()
    _write(astro_root / "c/copy_of_face_0.jpg", sharp)
    _write(astro_root / "c/blurred.jpg", _encode(cv2.GaussianBlur(astronaut[20:240, 150:330], (0, 0), 4), "JPEG"))
    _write(astro_root / "c/truncated.jpg", sharp[: len(sharp) // 2])
    _write(astro_root / "c/random.jpg", np.random.default_rng(0).bytes(5000))
    _write(astro_root / "c/notes.txt", b"not an image")

    lfw_root = tmp_path / "lfw"
    for i, face in enumerate(skdata.lfw_subset()[:3]):
        _write(lfw_root / f"small_{i}.jpg", _encode((face * 255).astype(np.uint8), "JPEG"))
    _write(lfw_root / "UPPER.JPG", sharp)

    roots = {"astro": str(astro_root), "lfw": str(lfw_root)}
    kept = {f"astro/{name}" for name in faces}
    dropped = {
        "duplicate": ["astro/c/copy_of_face_0.jpg", "lfw/UPPER.JPG"],
        "corrupt": ["astro/c/random.jpg", "astro/c/truncated.jpg"],
        "too_small": [f"lfw/small_{i}.jpg" for i in range(3)],
        "blurry": ["astro/c/blurred.jpg"],
    }
    return roots, kept, dropped


def test_builder_writes_array_record_shards_readable_without_tensorflow(face_tree, tmp_path):
    roots, kept, _ = face_tree
    data_dir = tmp_path / "tfds"
    report = face_shards.build_face_shards(roots, data_dir)

    source = face_shards.load_face_source(data_dir)
    assert "tensorflow" not in sys.modules
    assert list(face_shards.dataset_dir(data_dir).glob("face_shards-train.array_record-*"))
    assert len(source) == report.kept == len(kept)
    records = [source[i] for i in range(len(source))]
    assert {r["id"].decode() for r in records} == kept
    for record in records:
        record_id = record["id"].decode()
        source_name, relative = record_id.split("/", 1)
        assert record["source"].decode() == source_name
        original = (pathlib.Path(roots[source_name]) / relative).read_bytes()
        if relative.endswith(".png"):
            stored = np.asarray(Image.open(io.BytesIO(record["image"])))
            expected = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))
            assert record["image"][:2] == b"\xff\xd8"
            assert np.abs(stored.astype(int) - expected).mean() < 3
        else:
            assert record["image"] == original


def test_quality_filter_drops_exactly_the_bad_files_with_their_reasons(face_tree, tmp_path):
    roots, kept, dropped = face_tree
    data_dir = tmp_path / "tfds"
    report = face_shards.build_face_shards(roots, data_dir)

    assert report.kept == len(kept)
    assert {reason: sorted(ids) for reason, ids in report.dropped.items()} == dropped
    assert report.drop_counts == {"duplicate": 2, "corrupt": 2, "too_small": 3, "blurry": 1}
    written = json.loads((face_shards.dataset_dir(data_dir) / face_shards.REPORT_FILENAME).read_text())
    assert written["drop_counts"] == report.drop_counts
    assert written["kept"] == len(kept) and written["scanned"] == len(kept) + 8


def test_rebuild_reuses_matching_build_and_refuses_a_different_one(face_tree, tmp_path):
    roots, kept, _ = face_tree
    data_dir = tmp_path / "tfds"
    face_shards.build_face_shards(roots, data_dir)
    shard = next(face_shards.dataset_dir(data_dir).glob("*.array_record-*"))
    mtime = shard.stat().st_mtime_ns

    assert face_shards.build_face_shards(roots, data_dir).kept == len(kept)
    assert shard.stat().st_mtime_ns == mtime
    keep_blurry = face_shards.QualityFilter(min_blur_var=0.0)
    with pytest.raises(FileExistsError, match="overwrite"):
        face_shards.build_face_shards(roots, data_dir, quality_filter=keep_blurry)
    report = face_shards.build_face_shards(roots, data_dir, quality_filter=keep_blurry, overwrite=True)
    assert report.drop_counts["blurry"] == 0
    assert len(face_shards.load_face_source(data_dir)) == len(kept) + 1


def test_laplacian_variance_matches_scipy():
    gray = cv2.cvtColor(skdata.astronaut()[:120, :150], cv2.COLOR_RGB2GRAY)
    expected = scipy.ndimage.laplace(gray.astype(np.float64), mode="mirror").var()
    np.testing.assert_allclose(face_shards.laplacian_variance(gray), expected, rtol=1e-10)


def test_bad_arguments_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="name=path"):
        face_shards.parse_image_roots("affectnet=/a,celeba")
    with pytest.raises(ValueError, match="twice"):
        face_shards.parse_image_roots("a=/x,a=/y")
    with pytest.raises(NotADirectoryError, match="missing"):
        face_shards.build_face_shards({"a": tmp_path / "missing"}, tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="build_face_shards"):
        face_shards.load_face_source(tmp_path / "empty")


def test_cli_builds_shards_and_prints_the_drop_table(face_tree, tmp_path):
    roots, kept, _ = face_tree
    data_dir = tmp_path / "tfds"
    spec = ",".join(f"{name}={root}" for name, root in roots.items())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.build_face_shards",
            f"--image_roots={spec}",
            f"--data_dir={data_dir}",
            "--min_face_size=32",
            "--log_every=2",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    table = dict(line.split() for line in result.stdout.splitlines()[-6:])
    assert table == {
        "kept": str(len(kept)),
        "duplicate": "2",
        "corrupt": "2",
        "too_small": "3",
        "blurry": "1",
        "scanned": str(len(kept) + 8),
    }
    assert "2/12 files" in result.stderr
    assert len(face_shards.load_face_source(data_dir)) == len(kept)


def test_builder_keeps_every_synthetic_affwild2_crop(synthetic_affwild2, tmp_path):
    crops = synthetic_affwild2 / "cropped_aligned"
    expected = {f"affwild2/{p.relative_to(crops).as_posix()}" for p in crops.rglob("*.jpg")}
    report = face_shards.build_face_shards({"affwild2": crops}, tmp_path / "tfds")
    source = face_shards.load_face_source(tmp_path / "tfds")
    assert report.kept == len(source) == len(expected)
    assert {source[i]["id"].decode() for i in range(0, len(source), 97)} <= expected
