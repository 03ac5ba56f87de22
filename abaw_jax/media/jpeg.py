"""The one corrupt-JPEG check for every reader of face crops and frame images (face shards, the fine-tuning and
feature loaders, the predictor, crop_faces).

PIL and OpenCV only print libjpeg's warnings and return an image whose missing part is flat grey: a file cut
short that still ends in an end-of-image marker (a copy interrupted and "repaired", a cut with EOI appended)
decodes to a grey-banded face that would be trained on or predicted from without a word. `check_jpeg` decodes
with libjpeg-turbo treating those warnings as errors.
"""

from __future__ import annotations

import simplejpeg

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"


class CorruptImageError(ValueError):
    """Raised when encoded image bytes cannot be decoded completely."""


def is_jpeg(encoded: bytes) -> bool:
    """Whether the bytes start with the JPEG start-of-image marker."""
    return encoded.startswith(JPEG_SOI)


def is_complete_jpeg(encoded: bytes) -> bool:
    """Whether the bytes are a JPEG that ends in its end-of-image marker (a cheap test, not a full check)."""
    return is_jpeg(encoded) and encoded.endswith(JPEG_EOI)


def check_jpeg(encoded: bytes) -> None:
    """Raises CorruptImageError when JPEG bytes do not decode completely (truncated, damaged entropy data).

    Every scan is entropy-decoded, which is where a cut-short file shows, but only at 1/8 scale in grey, so the
    check costs about a third of a full decode. Bytes that are not a JPEG pass (their decoder checks them).
    """
    if not is_jpeg(encoded):
        return
    try:
        simplejpeg.decode_jpeg(encoded, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as e:
        raise CorruptImageError(f"libjpeg: {e}") from e
