r"""Writes synthetic AffectNet, RAF-DB and BP4D mini-releases in their official layouts (deterministic from a seed).

  python -m data_prep.make_synthetic_sources --out_dir=/tmp/synthetic_sources --seed=0

produces `<out_dir>/affectnet/`, `<out_dir>/rafdb/basic/` and `<out_dir>/bp4d/`, each with the crops the readers
take (`crops/`, or RAF-DB's `Image/aligned/`); see `abaw_jax.data.synthetic_sources`. About 20 s on 2 CPU cores.
"""

from absl import app, flags, logging

from abaw_jax.data import synthetic_sources
from abaw_jax.runtime import errors

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for source, root in synthetic_sources.generate(_OUT_DIR.value, seed=_SEED.value).items():
        logging.info("wrote the synthetic %s release to %s", source, root)


if __name__ == "__main__":
    errors.run(main)
