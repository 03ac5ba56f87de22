"""Filling frames without a face: numpy's interp (which holds the ends) as the reference, per video and channel."""

import numpy as np

from abaw_jax.eval import coverage


def test_fill_matches_numpy_interp_and_keeps_faceless_videos():
    rng = np.random.default_rng(0)
    lengths = (30, 12, 7, 1)
    arrays = [rng.uniform(size=(n, 4)).astype(np.float32) for n in lengths]
    faces = [rng.uniform(size=n) < 0.6 for n in lengths]
    faces[0][:3] = False  # missing at the start: held
    faces[0][-4:] = False  # and at the end
    faces[2][:] = False  # no face at all: the model's own outputs stay
    faces[3][:] = True
    values, mask = coverage.pad_batch(arrays)
    face, _ = coverage.pad_batch(faces, values.shape[1])
    filled = np.asarray(coverage.fill_missing(values, face, mask))
    for v, (array, has_face) in enumerate(zip(arrays, faces)):
        if has_face.any():
            frames = np.flatnonzero(has_face)
            expected = np.stack([np.interp(np.arange(len(array)), frames, array[frames, c]) for c in range(4)], 1)
        else:
            expected = array
        np.testing.assert_allclose(filled[v, : len(array)], expected, rtol=1e-6, atol=1e-7)
        assert np.all(filled[v, len(array) :] == 0)


def test_pad_batch_shapes_and_mask():
    values, mask = coverage.pad_batch([np.ones((2, 3)), np.ones((5, 3))])
    assert values.shape == (2, 5, 3) and mask.tolist() == [[1, 1, 0, 0, 0], [1] * 5]
