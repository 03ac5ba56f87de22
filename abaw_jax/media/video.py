"""Media file facts shared by every reader of raw data: the one list of video and of image extensions, frame timing."""

import os

import av
import numpy as np

# In the order a release's video of a given name is looked for (Aff-Wild2 ships mp4 and avi).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
# Face crops and image folders (the release's cropped_aligned/, AffectNet-style trees, data_prep inputs).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def frame_timestamps(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """(presentation times in seconds of every video packet, sorted, first at 0; the stream's average rate).

    For telling constant from variable frame rates: the predictor's time column uses these times."""
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: this file has no video stream.")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        times = sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.size and p.pts is not None)
    times = np.asarray(times, np.float64)
    return (times - times[0] if len(times) else times), rate


def is_variable_rate(times: np.ndarray, tolerance: float = 0.05) -> bool:
    """Whether the frame intervals differ from their median by more than `tolerance` of it anywhere."""
    if len(times) < 3:
        return False
    steps = np.diff(times)
    median = float(np.median(steps))
    return median > 0 and bool(np.any(np.abs(steps - median) > tolerance * median))
