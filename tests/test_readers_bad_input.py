"""Bad inputs to the Aff-Wild2 readers: each must stop with a message naming the path, what was expected and
what was found, never load an empty or shifted dataset. One small release per test, made with the official
layout; each case breaks one thing. Later readers add their cases here in the same style.
"""

import pathlib

import numpy as np
import pytest

from abaw_jax.data import affwild2
from abaw_jax.tasks import EXPR

TASK_DIR = "EXPR_Recognition_Challenge"


def make_release(
    root: pathlib.Path, *, rows: int = 4, crop_names=None, split="Train_Set", annotation_name="video1.txt"
) -> tuple[pathlib.Path, pathlib.Path]:
    """An EXPR release with one video: `rows` labelled frames and the given crop file names."""
    annotation = root / "annotations" / TASK_DIR / split / annotation_name
    annotation.parent.mkdir(parents=True)
    annotation.write_text("\n".join([EXPR.header] + [str(k % 8) for k in range(rows)]) + "\n")
    crops = root / "crops" / "video1"
    crops.mkdir(parents=True)
    for name in crop_names if crop_names is not None else [f"{k:05d}.jpg" for k in range(1, rows + 1)]:
        (crops / name).write_bytes(b"")
    return root / "annotations", root / "crops"


def test_the_well_formed_release_loads(tmp_path):
    annotations, crops = make_release(tmp_path)
    video = affwild2.load_task(annotations, "EXPR", crops)["video1"]
    np.testing.assert_array_equal(video.frames, [1, 2, 3, 4])
    np.testing.assert_array_equal(video.labels, [0, 1, 2, 3])


def test_crops_numbered_from_zero_are_refused_not_shifted(tmp_path):
    annotations, crops = make_release(tmp_path, crop_names=[f"{k:05d}.jpg" for k in range(0, 4)])
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    message = str(caught.value)
    assert str(crops / "video1" / "00000.jpg") in message
    assert "looks numbered from 0" in message and "00001.jpg" in message


@pytest.mark.parametrize(
    "names",
    [
        ["1.jpg", "2.jpg", "3.jpg"],
        ["00001.JPG", "00002.JPG"],
        ["00001.png", "00002.png"],
        ["000001.jpg", "000002.jpg"],
        ["00001.jpg", "00002.jpg", "00003.jpeg"],  # a mix: the .jpeg frame would silently vanish
    ],
)
def test_crops_named_in_another_scheme_are_refused(tmp_path, names):
    annotations, crops = make_release(tmp_path, crop_names=names)
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    message = str(caught.value)
    odd = sorted(n for n in names if not affwild2.CROP_PATTERN.match(n))
    assert f"{crops / 'video1'}: expected crops named <k:05d>.jpg" in message
    assert f"found {len(odd)} image(s) named otherwise ({', '.join(odd[:3])}" in message


def test_non_image_files_beside_the_crops_are_ignored(tmp_path):
    annotations, crops = make_release(tmp_path, crop_names=["00001.jpg", "00002.jpg", "Thumbs.db", "notes.txt"])
    video = affwild2.load_task(annotations, "EXPR", crops)["video1"]
    np.testing.assert_array_equal(video.frames, [1, 2])


def test_empty_crop_folder_and_empty_crops_tree(tmp_path):
    annotations, crops = make_release(tmp_path / "a", crop_names=[])
    with pytest.raises(affwild2.LayoutError, match="found no crop in this folder"):
        affwild2.load_task(annotations, "EXPR", crops)
    annotations, crops = make_release(tmp_path / "b")
    for path in (crops / "video1").iterdir():
        path.unlink()
    (crops / "video1").rmdir()
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    assert f"{crops}: expected one crop folder per video" in str(caught.value)
    assert "found no folder" in str(caught.value)


def test_crops_beyond_every_annotated_row(tmp_path):
    annotations, crops = make_release(tmp_path, rows=3, crop_names=["00007.jpg", "00008.jpg"])
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    assert "its 3 rows label frames 1..3, but the crops in" in str(caught.value)
    assert "are frames 7..8: no frame has both" in str(caught.value)


def test_annotation_file_without_rows(tmp_path):
    annotations, crops = make_release(tmp_path, rows=0, crop_names=["00001.jpg"])
    with pytest.raises(affwild2.AnnotationError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    assert caught.value.line == 2 and "one row of EXPR labels per frame after the header" in str(caught.value)


def test_misspelled_split_folder(tmp_path):
    annotations, crops = make_release(tmp_path, split="Train_set")
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops, splits=["Train_Set"])
    message = str(caught.value)
    assert f"{annotations / TASK_DIR / 'Train_Set'}: no such split folder" in message
    assert "holds ['Train_set']" in message and "'Validation_Set'" in message
    # With the default splits, a tree holding neither official split is refused too, not read as empty.
    with pytest.raises(affwild2.LayoutError, match="no such split folder"):
        affwild2.load_task(annotations, "EXPR", crops)


def test_splits_given_as_a_string(tmp_path):
    annotations, crops = make_release(tmp_path)
    with pytest.raises(TypeError, match=r"got the string 'Train_Set' \(write \['Train_Set'\]\)"):
        affwild2.load_task(annotations, "EXPR", crops, splits="Train_Set")


def test_upper_case_txt_files_are_read(tmp_path):
    annotations, crops = make_release(tmp_path, annotation_name="video1.TXT")
    videos = affwild2.load_task(annotations, "EXPR", crops)
    assert list(videos) == ["video1"] and len(videos["video1"]) == 4


def test_split_folder_without_annotation_files(tmp_path):
    annotations, crops = make_release(tmp_path, annotation_name="video1.csv")
    with pytest.raises(affwild2.LayoutError) as caught:
        affwild2.load_task(annotations, "EXPR", crops)
    assert "expected one <name>.txt annotation file per video, found none (holds ['video1.csv'])" in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-8-sig"])
def test_annotation_files_saved_in_other_encodings_are_read(tmp_path, encoding):
    annotations, crops = make_release(tmp_path)
    path = annotations / TASK_DIR / "Train_Set" / "video1.txt"
    text = path.read_text()
    data = (b"\xfe\xff" + text.encode("utf-16-be")) if encoding == "utf-16-be-bom" else text.encode(encoding)
    path.write_bytes(data)
    video = affwild2.load_task(annotations, "EXPR", crops)["video1"]
    np.testing.assert_array_equal(video.labels, [0, 1, 2, 3])


def test_latin1_byte_in_a_row_names_the_file_and_line(tmp_path):
    """Not UTF-8, so read as Latin-1; the row parser then names the line (it was a UnicodeDecodeError)."""
    annotations, crops = make_release(tmp_path)
    path = annotations / TASK_DIR / "Train_Set" / "video1.txt"
    path.write_bytes(path.read_bytes().replace(b"\n2\n", b"\n2\xe9\n"))
    with pytest.raises(affwild2.AnnotationError, match=r"video1\.txt:4: expected .*found '2é'"):
        affwild2.load_task(annotations, "EXPR", crops)


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    annotations, crops = make_release(tmp_path)
    path = annotations / TASK_DIR / "Train_Set" / "video1.txt"
    path.write_bytes(path.read_text().encode("utf-16-le"))
    with pytest.raises(affwild2.AnnotationError, match=r"video1\.txt:1: .*UTF-16 without a byte-order mark"):
        affwild2.load_task(annotations, "EXPR", crops)


def test_lower_case_task_keys_are_accepted_and_unknown_ones_listed(tmp_path):
    annotations, crops = make_release(tmp_path)
    video = affwild2.load_task(annotations, "expr", crops)["video1"]
    assert video.task == "EXPR" and len(video) == 4
    with pytest.raises(ValueError, match=r"unknown task 'exp'; expected one of \['AU', 'EXPR', 'VA'\]"):
        affwild2.load_task(annotations, "exp", crops)
