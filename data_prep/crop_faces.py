"""Detects and crops faces from raw videos or frame folders into Aff-Wild2's `cropped_aligned` layout.

    python -m data_prep.crop_faces --videos=/data/affwild2/videos --out_dir=/data/affwild2/cropped_aligned

writes `<out_dir>/<video>/<k:05d>.jpg` (224x224 JPEG, k the 1-based frame index; frames without a face get
no file) for every .mp4/.avi/.mkv/.mov/.webm in the folder. `--videos` also takes a comma-separated list
of files and folders; `--image_dirs=DIR1,DIR2` adds folders of frame images (the k-th image in natural
name order is frame k, the output name is the folder name). Videos with two people: `--two_faces` writes
`<video>_left` and `<video>_right` for every video, `--two_face_videos=NAME1,NAME2` only for those named.
YuNet instead of the Haar cascade: `--detector=yunet --yunet_onnx=face_detection_yunet_2023mar.onnx`.
Prints a progress line every `--log_every` frames and a summary per video. Unreadable sources (a file
OpenCV cannot open, a truncated video, an unreadable image) are logged, leave no crops behind, and end the
run with one line `error: skipped N of M sources ...` and exit status 1 after the others are done.
"""
from absl import app
from absl import flags
from absl import logging

from abaw_jax.runtime import errors
from abaw_jax.media import faces

_VIDEOS = flags.DEFINE_list("videos", [], "Video files and/or folders of videos.")
_IMAGE_DIRS = flags.DEFINE_list("image_dirs", [], "Folders of frame images, one folder per video.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output root: <out_dir>/<video>/<k:05d>.jpg.", required=True)
_SIZE = flags.DEFINE_integer("size", 224, "Side of the square crops in pixels.")
_MARGIN = flags.DEFINE_float("margin", 1.25, "Crop side as a multiple of the detected box side.")
_DETECTOR = flags.DEFINE_enum("detector", "haar", ["haar", "yunet"], "Face detector.")
_YUNET_ONNX = flags.DEFINE_string("yunet_onnx", None, "YuNet ONNX model file (for --detector=yunet).")
_TWO_FACES = flags.DEFINE_bool("two_faces", False, "Write <video>_left and <video>_right for all videos.")
_TWO_FACE_VIDEOS = flags.DEFINE_list("two_face_videos", [], "Names (file stems) of two-person videos.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 500, "Frames between progress lines.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _VIDEOS.value and not _IMAGE_DIRS.value:
        raise app.UsageError("Give --videos and/or --image_dirs.")
    detector = faces.make_detector(_DETECTOR.value, _YUNET_ONNX.value)
    report = faces.crop_sources(
        faces.find_videos(_VIDEOS.value),
        _IMAGE_DIRS.value,
        _OUT_DIR.value,
        detector,
        size=_SIZE.value,
        margin=_MARGIN.value,
        two_faces=_TWO_FACES.value or set(_TWO_FACE_VIDEOS.value),
        log_every=_LOG_EVERY.value,
    )
    frames = sum(s.frames for s in report.summaries)
    without = sum(s.frames_without_face for s in report.summaries)
    logging.info(
        "Done: %d sources cropped (%d frames, %d without a face), %d skipped.",
        len(report.summaries), frames, without, len(report.failed),
    )
    for name, error in report.failed.items():
        logging.error("Skipped %s: %s", name, error)
    if report.failed:
        total = len(report.summaries) + len(report.failed)
        first = next(iter(report.failed.values()))
        raise errors.JobError(f"skipped {len(report.failed)} of {total} sources ({', '.join(report.failed)}); "
                              f"the first: {first}")


if __name__ == "__main__":
    errors.run(main)
