"""media.align: the similarity fit against scikit-image's, landmarks landing on the template, tilted faces upright."""

import cv2
import numpy as np
import pytest
from skimage import transform

from abaw_jax.data import synthetic
from abaw_jax.media import align

# How far (in pixels of a 112 crop) a drawn landmark's centre may land from the template point: measured at most
# 0.012 px over the cases below; a half-pixel slip in the area-shrinking path (4x case) moves it 0.45 px.
LANDMARK_TOLERANCE_PX = 0.05


def _similarity(scale: float, degrees: float, shift) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.reshape(shift, (2, 1))])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize("seed", range(5))
def test_similarity_transform_matches_scikit_image(seed):
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 300, (5, 2))
    dst = _apply(_similarity(rng.uniform(0.2, 3), rng.uniform(-90, 90), rng.uniform(-50, 50, 2)), src)
    dst += rng.normal(0, 3, dst.shape)  # not an exact similarity: the least-squares fit is what is compared
    ours = align.similarity_transform(src, dst)
    reference = transform.SimilarityTransform.from_estimate(src, dst).params[:2]
    np.testing.assert_allclose(ours, reference, atol=1e-9)


def test_a_mirrored_face_is_fitted_by_a_rotation_never_a_reflection():
    template = align.template()
    mirrored = template * [-1, 1] + [200, 0]  # left and right swapped, as if the image were flipped
    matrix = align.similarity_transform(mirrored, template)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(
        matrix, transform.SimilarityTransform.from_estimate(mirrored, template).params[:2], atol=1e-9
    )


def test_template_is_arcface_and_scales_with_the_crop():
    np.testing.assert_allclose(align.template(112)[0], [38.2946, 51.6963])
    np.testing.assert_allclose(align.template(224), 2 * align.template(112))
    with pytest.raises(ValueError, match="five finite"):
        align.alignment_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        align.similarity_transform(np.ones((5, 2)), align.template())


def _dot_centroids(crop: np.ndarray, expected: np.ndarray, radius: float) -> np.ndarray:
    """The brightness-weighted centre of the bright dot near each expected point."""
    gray = crop.astype(np.float64)
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]]
    found = []
    for x, y in expected:
        near = (xs - x) ** 2 + (ys - y) ** 2 <= (2 * radius) ** 2
        weight = gray * near
        found.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    return np.array(found)


@pytest.mark.parametrize(
    "size, scale, degrees", [(112, 1.0, 0.0), (112, 1.7, 33.0), (224, 0.8, -25.0), (112, 4.0, 12.0)]
)  # 4x: the area-shrinking path
def test_landmarks_land_on_the_template(size, scale, degrees):
    """Five Gaussian dots drawn at a similarity image of the template come out on the template."""
    face_to_image = _similarity(scale, degrees, [300.0, 260.0])
    points = _apply(face_to_image, align.template(112) - 56)
    sigma = 1.5 * scale  # 1.5 template pixels, whatever the face's size in the image
    ys, xs = np.mgrid[:640, :720]
    image = np.zeros((640, 720), np.float64)
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    image = np.clip(255 * image, 0, 255).astype(np.uint8)

    crop = align.align_face(image, points, size)
    assert crop.shape == (size, size) and crop.dtype == np.uint8
    expected = align.template(size)
    found = _dot_centroids(crop, expected, radius=3 * sigma * size / (112 * scale))
    assert np.abs(found - expected).max() < LANDMARK_TOLERANCE_PX * size / 112, found - expected


def _render(roll: float, center=(160.0, 120.0)) -> tuple[np.ndarray, np.ndarray]:
    identity = synthetic.Identity(skin=(0.55, 0.66, 0.86), hair=(0.1, 0.12, 0.16), face_length=0.6, eye_spacing=0.19)
    canvas = np.full((240, 320, 3), 0.5, np.float32)
    landmarks = synthetic.render_face(canvas, center, 70.0, np.zeros(12), identity, np.ones(3), roll)
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8), landmarks


def test_a_tilted_face_comes_out_upright():
    """The same drawn face tilted 30 degrees and shifted: aligned on its drawn landmarks it matches the upright
    one (correlation > 0.97), while the same crop without undoing the tilt does not (< 0.9)."""
    upright, upright_marks = _render(0.0)
    tilted, tilted_marks = _render(30.0, center=(150.0, 130.0))
    a = align.align_face(upright, upright_marks).astype(np.float64)
    b = align.align_face(tilted, tilted_marks).astype(np.float64)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    # The eyes are level in the aligned crop: the drawn landmarks map onto a level pair.
    eyes = _apply(align.alignment_matrix(tilted_marks), tilted_marks[:2])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1.0
    # Control: shift and scale only (the rotation left in) does not match the upright crop.
    matrix = align.alignment_matrix(tilted_marks)
    scale = np.hypot(*matrix[:, 0])
    centre = tilted_marks.mean(0)
    no_rotation = np.array([[scale, 0, 56 - scale * centre[0]], [0, scale, 56 - scale * centre[1]]])
    c = cv2.warpAffine(tilted, no_rotation, (112, 112)).astype(np.float64)
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] < 0.9


def test_a_face_outside_the_frame_is_black_there():
    image = np.full((100, 100, 3), 200, np.uint8)
    points = _apply(_similarity(0.5, 0.0, [0.0, 0.0]), align.template(112))  # face at the top-left corner
    crop = align.align_face(image, points - 20)
    assert (crop[:10, :10] == 0).all() and (crop[-10:, -10:] == 200).all()
