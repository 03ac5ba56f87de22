"""The scene router's logistic regression against scikit-learn's, on per-video feature statistics."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from abaw_jax.eval import scene_router


def _videos(rng, count):
    is_reaction = rng.uniform(size=count) < 0.4
    stats = []
    for reaction in is_reaction:
        frames = rng.normal(0.0, 1.0, (50, 8)) + (np.r_[0.6, -0.4, 0, 0, 0, 0, 0, 0] if reaction else 0)
        frames[:, 2] *= 1.8 if reaction else 1.0  # and a different spread in one dimension
        stats.append(scene_router.video_statistics(frames, rng.uniform(size=50) < 0.9))
    return np.stack(stats), is_reaction


def test_router_agrees_with_sklearn_and_generalises():
    rng = np.random.default_rng(0)
    train_x, train_y = _videos(rng, 80)
    test_x, test_y = _videos(rng, 60)
    router = scene_router.fit_router(train_x, train_y)
    reference = LogisticRegression(C=1.0 / (1e-2 * len(train_y)), max_iter=2000).fit(
        (train_x - router.mean) / router.scale, train_y
    )
    ours = router.predict(test_x)
    assert (ours == test_y).mean() >= 0.9
    assert (ours == reference.predict((test_x - router.mean) / router.scale)).mean() >= 0.95


def test_statistics_use_face_frames_and_router_needs_both_scenes():
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    face = np.array([1, 1, 0, 0, 0, 0], bool)
    np.testing.assert_allclose(scene_router.video_statistics(features, face), [1, 2, 1, 1])
    with pytest.raises(ValueError, match="all 3 are other videos"):
        scene_router.fit_router(np.zeros((3, 2)), np.zeros(3, bool))


def test_fit_and_validate_fits_on_train_only_and_saves_what_it_predicts(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _videos(rng, 100)
    train, validation = np.arange(100) < 70, np.arange(100) >= 80  # 70..79 belong to neither
    router, report = scene_router.fit_and_validate(x, y, train, validation)
    alone = scene_router.fit_router(x[:70], y[:70])
    np.testing.assert_array_equal(router.weights, alone.weights)
    assert report == {
        "train_videos": 70,
        "train_reaction_videos": int(y[:70].sum()),
        "validation_videos": 20,
        "validation_accuracy": pytest.approx((alone.predict(x[80:]) == y[80:]).mean()),
    }
    router.save(tmp_path / "router.npz")
    loaded = scene_router.SceneRouter.load(tmp_path / "router.npz")
    np.testing.assert_array_equal(loaded.probability(x), router.probability(x))
    assert np.isnan(scene_router.fit_and_validate(x, y, train, np.zeros(100, bool))[1]["validation_accuracy"])
