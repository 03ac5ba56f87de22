r"""Builds the TFDS face shards (ArrayRecord, JPEG bytes + source + id) from image trees.

  python -m data_prep.build_face_shards \
      --image_roots=affectnet=/data/affectnet,celeba=/data/celeba --data_dir=/data/tfds \
      [--min_face_size=64 --min_blur_var=20 --num_threads=4 --overwrite]

Every *.jpg/*.jpeg/*.png below each root is checked (exact duplicate, corrupt, smaller than
--min_face_size, Laplacian variance below --min_blur_var; 0 disables the blur check); the rest is
written to <data_dir>/face_shards/1.0.0/ together with quality_report.json (counts per reason and every
dropped id). Progress is logged every --log_every files. Read the shards with
`abaw_jax.data.face_shards.load_face_source(data_dir)`.
"""

from absl import app, flags, logging

from abaw_jax.data import face_shards
from abaw_jax.runtime import errors

_IMAGE_ROOTS = flags.DEFINE_list(
    "image_roots", None, "Comma-separated source_name=folder pairs, searched recursively.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write to.", required=True)
_MIN_FACE_SIZE = flags.DEFINE_integer(
    "min_face_size",
    face_shards.QualityFilter.min_face_size,
    "Drop images whose shorter side is below this many pixels.",
)
_MIN_BLUR_VAR = flags.DEFINE_float(
    "min_blur_var",
    face_shards.QualityFilter.min_blur_var,
    "Drop images whose grey Laplacian variance is below this (blurry); 0 keeps all.",
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Rebuild even if data_dir holds shards from other roots or thresholds."
)
_LOG_EVERY = flags.DEFINE_integer("log_every", 1000, "Log progress every this many files.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 4, "Threads that read and check files.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    report = face_shards.build_face_shards(
        face_shards.parse_image_roots(_IMAGE_ROOTS.value),
        _DATA_DIR.value,
        quality_filter=face_shards.QualityFilter(min_face_size=_MIN_FACE_SIZE.value, min_blur_var=_MIN_BLUR_VAR.value),
        overwrite=_OVERWRITE.value,
        log_every=_LOG_EVERY.value,
        num_threads=_NUM_THREADS.value,
    )
    print(f"Face shards in {face_shards.dataset_dir(_DATA_DIR.value)}")
    print(report.table())


if __name__ == "__main__":
    errors.run(main)
