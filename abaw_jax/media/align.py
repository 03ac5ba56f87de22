"""Aff-Wild2-style face alignment: five landmarks -> similarity transform onto a five-point template -> square crop.

Aff-Wild2's `cropped_aligned` faces are landmark-aligned crops, the layout of ArcFace-style face recognition crops.
`align_face` maps the five points (left eye, right eye, nose tip, left and right mouth corner, left/right as seen in
the image) onto `ARCFACE_TEMPLATE_112` scaled to the crop size with the least-squares similarity transform (rotation,
uniform scale, translation; never a reflection) and warps the image with it. `crop_faces`, `predict`, the predictor
bundle and the synthetic release all cut their crops with this one function.
"""

from __future__ import annotations

import cv2
import numpy as np

TEMPLATE_NAME = "arcface_112"
# The five-point ArcFace template for 112x112 crops, (x, y) pixels: insightface's `arcface_dst` in
# python-package/insightface/utils/face_align.py (the crops insightface's recognition models are trained on).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64
)
DEFAULT_SIZE = 112


def template(size: int = DEFAULT_SIZE) -> np.ndarray:
    """The template's five (x, y) points for a `size` x `size` crop (the 112 px template scaled)."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the similarity transform that maps points `src` (N, 2) onto `dst` (N, 2) in least squares.

    Umeyama's closed form (IEEE TPAMI 13(4), 1991), with the sign correction that rules out a reflection: a mirrored
    face is fitted by the best rotation, not flipped.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var == 0:
        raise ValueError("the source points all coincide: no similarity transform maps them")
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The 2x3 matrix that takes image pixels to the aligned crop's pixels for these five landmarks."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"expected five finite (x, y) landmarks, got an array of shape {landmarks.shape}")
    return similarity_transform(landmarks, template(size))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The `size` x `size` crop of `image` (H, W[, C] uint8) whose five landmarks land on the template; black outside
    the image.

    A warp that shrinks the face more than twofold (a big face in a 4K frame) would alias with bilinear sampling, so
    the face's region is first reduced with area averaging to the crop's scale, then rotated into place.
    """
    matrix = alignment_matrix(landmarks, size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 0.5:
        image, matrix = _shrink_region(image, matrix, size, scale)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _shrink_region(image: np.ndarray, matrix: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(the part of `image` the crop sees, area-reduced by `scale`; the matrix from it to the crop)."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    height, width = image.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int) - 2, 0, [width, height])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 2, 0, [width, height])
    region = image[y0:y1, x0:x1]
    small_w, small_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = (
        cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
        if region.size
        else np.zeros((small_h, small_w) + image.shape[2:], image.dtype)
    )
    fx, fy = small_w / max(1, x1 - x0), small_h / max(1, y1 - y0)
    # cv2.resize puts small pixel q at region pixel (q + 0.5) / f - 0.5; compose that with the shift and `matrix`.
    from_small = np.array([[1 / fx, 0, (0.5 / fx - 0.5) + x0], [0, 1 / fy, (0.5 / fy - 0.5) + y0], [0, 0, 1]])
    return small, matrix @ from_small
