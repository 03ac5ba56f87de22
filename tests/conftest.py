"""Shared pytest fixtures."""

import pathlib

import pytest
from absl import flags

from abaw_jax.data import synthetic

# Generates in a few seconds. Holds enough people for a pixel classifier to generalise across
# identities, and every layout feature: both scene types, `_left`/`_right` pairs, per-task gaps,
# invalid rows, missing crops and a test video.
SYNTHETIC_AFFWILD2_ARGS = dict(num_videos=20, frames_per_video=80, num_test_videos=1, seed=0)


@pytest.fixture(scope="session")
def synthetic_affwild2(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Root of a generated synthetic Aff-Wild2 release (see abaw_jax.data.synthetic)."""
    root = tmp_path_factory.mktemp("synthetic_affwild2")
    synthetic.generate(root, **SYNTHETIC_AFFWILD2_ARGS)
    return root


@pytest.fixture(autouse=True)
def absl_flags_parsed():
    """grain's worker processes read absl flags, which pytest never parses (and CLI tests reset)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tiny_pipeline(synthetic_affwild2, tmp_path_factory):
    """A pipeline workdir with real features, fusion, evaluate and predictor bundle on the fixture release
    (tests/tiny_pipeline.py; random-weight encoder)."""
    import tiny_pipeline as builder

    return builder.build(tmp_path_factory.mktemp("tiny_pipeline"), synthetic_affwild2)
