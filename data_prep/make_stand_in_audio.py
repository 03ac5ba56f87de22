r"""Writes untrained audio encoders in the layouts the features stage reads, for CPU runs of Table 6's audio rows.

  python -m data_prep.make_stand_in_audio --out_dir=/tmp/abaw_stand_in_audio [--kinds=hubert,wav2vec2,vggish]

writes `<out_dir>/hubert/`, `<out_dir>/wav2vec2/` (tiny transformers folders) and `<out_dir>/vggish.pth` (288 MB)
with random, seeded weights (`abaw_jax.media.stand_in_audio`): `configs/abaw.py:table6_tiny` uses them so that the
rows with Hubert, wav2vec2 or VGGish run end to end on a machine without the published models, and the report
names the files. For the paper's results point config.features.audio_models at the published models instead
(README "Table 6"). Needs torch (the dev extras); a few seconds.
"""

from absl import app, flags, logging

from abaw_jax.media import stand_in_audio
from abaw_jax.runtime import errors

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_KINDS = flags.DEFINE_list("kinds", list(stand_in_audio.KINDS), f"Which of {stand_in_audio.KINDS} to write.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the weights.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for kind, path in stand_in_audio.write_stand_ins(_OUT_DIR.value, _KINDS.value, _SEED.value).items():
        logging.info("wrote an untrained %s to %s", kind, path)


if __name__ == "__main__":
    errors.run(main)
