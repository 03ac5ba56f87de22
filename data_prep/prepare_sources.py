r"""Cuts the aligned face crops that fine-tuning reads from an AffectNet, RAF-DB or BP4D release, once.

  python -m data_prep.prepare_sources --source=affectnet --root=/data/AffectNet --out_dir=/data/affectnet_crops
  python -m data_prep.prepare_sources --source=rafdb --root=/data/RAF-DB/basic --out_dir=/data/rafdb_crops
  python -m data_prep.prepare_sources --source=bp4d --root=/data/BP4D --frames=/data/BP4D/Sequences \
      --out_dir=/data/bp4d_crops

AffectNet: every listed image with an EXPR or VA label, aligned on its 68 landmarks (`data.affectnet`), into
`<out_dir>/<subDirectory_filePath stem>.jpg`. RAF-DB: every labelled original image, aligned on its five manual
landmarks (`data.rafdb`), into `<out_dir>/<stem>_aligned.jpg` (the release's own `Image/aligned` crops are read
without this step). BP4D: every coded frame, face found by `--detector` (CenterFace by default, `media.faces`) and
aligned on its landmarks, into `<out_dir>/<subject>_<task>/<frame:05d>.jpg` (`data.bp4d`). Crops already written
are kept, so an interrupted run resumes; a listed image that is missing ends the run with one `error:` line naming
the list file and line.
"""

from absl import app, flags, logging

from abaw_jax.data import affectnet, bp4d, rafdb
from abaw_jax.media import faces
from abaw_jax.runtime import errors

_SOURCE = flags.DEFINE_enum("source", None, ["affectnet", "rafdb", "bp4d"], "Release to prepare.", required=True)
_ROOT = flags.DEFINE_string("root", None, "Root of the release (see the readers for the layout).", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder of the crops.", required=True)
_FRAMES = flags.DEFINE_string(
    "frames", None, "BP4D: the folder of <subject>/<task>/<frame>.jpg (default <root>/Sequences)."
)
_SIZE = flags.DEFINE_integer("size", 112, "Side of the square crops in pixels.")
_DETECTOR = flags.DEFINE_enum("detector", "centerface", list(faces.DETECTORS), "BP4D: face detector.")
_CENTERFACE_WEIGHTS = flags.DEFINE_string("centerface_weights", None, "BP4D: CenterFace ONNX file.")
_YUNET_ONNX = flags.DEFINE_string("yunet_onnx", None, "BP4D: YuNet ONNX model file (for --detector=yunet).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rewrite crops that exist.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SOURCE.value == "affectnet":
        written = affectnet.prepare_crops(_ROOT.value, _OUT_DIR.value, size=_SIZE.value, overwrite=_OVERWRITE.value)
        logging.info("Done: %d AffectNet crops written to %s.", written, _OUT_DIR.value)
    elif _SOURCE.value == "rafdb":
        written = rafdb.prepare_crops(_ROOT.value, _OUT_DIR.value, size=_SIZE.value, overwrite=_OVERWRITE.value)
        logging.info("Done: %d RAF-DB crops written to %s.", written, _OUT_DIR.value)
    else:
        detector = faces.make_detector(_DETECTOR.value, _YUNET_ONNX.value, _CENTERFACE_WEIGHTS.value)
        frames = _FRAMES.value or f"{_ROOT.value}/Sequences"
        written, without = bp4d.prepare_crops(
            _ROOT.value, frames, _OUT_DIR.value, detector, size=_SIZE.value, overwrite=_OVERWRITE.value
        )
        logging.info(
            "Done: %d BP4D crops written to %s, %d coded frames without a face.", written, _OUT_DIR.value, without
        )


if __name__ == "__main__":
    errors.run(main)
