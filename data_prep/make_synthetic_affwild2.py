r"""Writes a synthetic Aff-Wild2 release (official layout, deterministic from a seed).

  python -m data_prep.make_synthetic_affwild2 --out_dir=/tmp/synthetic_affwild2 \
      --num_videos=16 --frames_per_video=300 --seed=0

produces `<out_dir>/annotations/`, `cropped_aligned/`, `videos/*.mp4` (with audio), `test_set/`,
`reaction_videos.txt` and `generation.json` / `README.md` with the generation rules; see
`abaw_jax.data.synthetic`. The defaults take a few seconds on 2 CPU cores.
"""

from absl import flags, logging

from abaw_jax.data import synthetic
from abaw_jax.runtime import errors

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 16, "Annotated source videos.")
_FRAMES = flags.DEFINE_integer("frames_per_video", 300, "Mean frames per video.")
_TEST_VIDEOS = flags.DEFINE_integer("num_test_videos", 2, "Videos listed only in test_set/.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_WIDTH = flags.DEFINE_integer("frame_width", 320, "Raw video width.")
_HEIGHT = flags.DEFINE_integer("frame_height", 240, "Raw video height.")
_CROP_SIZE = flags.DEFINE_integer("crop_size", 112, "Side of the cropped_aligned JPEGs.")


def main(argv):
    del argv
    summary = synthetic.generate(
        _OUT_DIR.value,
        num_videos=_NUM_VIDEOS.value,
        frames_per_video=_FRAMES.value,
        num_test_videos=_TEST_VIDEOS.value,
        seed=_SEED.value,
        frame_size=(_WIDTH.value, _HEIGHT.value),
        crop_size=_CROP_SIZE.value,
    )
    logging.info(
        "wrote %d videos (%d annotated people, %d test), %d frames, %d crops to %s in %.1f s",
        len(summary.videos),
        len(summary.annotation_names),
        len(summary.test_names),
        summary.num_frames,
        summary.num_crops,
        summary.out_dir,
        summary.seconds,
    )


if __name__ == "__main__":
    errors.run(main)
