"""The vmapped ensemble step is the members' own steps side by side; member data selection and clip sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.data import affwild2, clips
from abaw_jax.jobs import fusion as fusion_job
from abaw_jax.models import fusion

CFG = fusion.TMFConfig(input_dim=6, num_outputs=8, proj_dim=16, width=8, depth=1, num_heads=2, mlp_dim=8, head_dim=8)


def _frame_data(rng, rows=300):
    return fusion_job.FrameData(
        features=rng.normal(size=(rows, CFG.input_dim)).astype(np.float32),
        face=rng.random(rows) > 0.1,
        labels=rng.integers(0, 8, rows).astype(np.int32),
        valid=rng.random(rows) > 0.1,
    )


@pytest.mark.parametrize("member_loop", ["vmap", "map"])
def test_vmapped_members_equal_members_trained_alone(member_loop):
    """Four members with different data, class weights, standardisation and learning rates (one of them 0, one
    fed non-finite features): three ensemble steps (vmapped, or looped inside the step) give each member what
    its own steps give it alone, with the same seed and clips; nothing leaks between members."""
    rng = np.random.default_rng(0)
    data = _frame_data(rng)
    data = data.replace(
        features=np.concatenate([data.features[:300], np.full((50, CFG.input_dim), np.nan, np.float32)])
    )
    data = data.replace(
        face=np.resize(data.face, 350), labels=np.resize(data.labels, 350), valid=np.resize(data.valid, 350)
    )
    members, clip_len, batch = 4, 12, 4
    constants = {
        "feature_mean": rng.normal(size=(members, CFG.input_dim)).astype(np.float32),
        "feature_std": rng.uniform(0.5, 2, (members, CFG.input_dim)).astype(np.float32),
        "class_weights": rng.uniform(0.5, 3, (members, 8)).astype(np.float32),
    }
    rates = np.array([1e-2, 0.0, 3e-3, 1e-3], np.float32)
    tx = fusion_job.make_optimizer(1e-3, 0.05)
    model = fusion.TMF(CFG)
    state = jax.jit(functools.partial(fusion_job.init_state, cfg=CFG, tx=tx))(jax.random.key(0), constants, rates)
    initial = state
    tracks = clips.Tracks.from_lengths({"a": 100, "b": 90, "c": 110, "nan": 50})
    samplers = [
        clips.ClipSampler(tracks, names, clip_len=clip_len, batch_clips=batch, seed=0, member_index=i)
        for i, names in enumerate([("a", "b"), ("c",), ("a", "c"), ("nan",)])
    ]
    step_fn = jax.jit(
        functools.partial(fusion_job.ensemble_train_step, model=model, task=tasks.EXPR, tx=tx, member_loop=member_loop)
    )
    alone_fn = jax.jit(functools.partial(fusion_job.member_train_step, model=model, task=tasks.EXPR, tx=tx))
    alone = [jax.tree.map(lambda x, i=i: x[i], initial.members) for i in range(members)]
    for step in range(3):
        batches = [s.batch(step) for s in samplers]
        rows, mask = np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
        state, metrics = step_fn(state, data, rows, mask)
        for i in range(members):
            alone[i], alone_metrics = alone_fn(alone[i], fusion_job.gather(data, rows[i], mask[i]))
            np.testing.assert_allclose(metrics["loss"][i], alone_metrics["loss"], rtol=1e-6)
    assert int(state.step) == 3
    assert not np.isfinite(metrics["loss"][3]) and np.isfinite(metrics["loss"][:3]).all()
    for i in range(members - 1):
        ours = jax.tree.map(lambda x, i=i: x[i], state.members)
        ours_params, alone_params = jax.tree.map(np.asarray, (ours.params, alone[i].params))
        # Biases with an exactly-zero gradient (see test_fusion_model): Adam moves them by rounding noise, which
        # differs between batched and unbatched kernels; only the size of their steps is comparable.
        for path in [("head1", "bias"), ("layer0", "norm2", "bias"), ("layer0", "attention", "key", "bias")]:
            a, b = _pop(ours_params, path), _pop(alone_params, path)
            np.testing.assert_array_less(np.abs(a - b), 3 * 2 * rates[i] + 1e-7)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), ours_params, alone_params)
        # (The running mean carries the noise-driven bias before the norm; the variance does not.)
        np.testing.assert_allclose(
            ours.batch_stats["head_norm"]["var"], alone[i].batch_stats["head_norm"]["var"], rtol=1e-4
        )
    # Learning rate 0 leaves member 1's parameters exactly where they started, while the others moved.
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.map(lambda x: x[1], state.members.params),
        jax.tree.map(lambda x: x[1], initial.members.params),
    )
    assert not np.allclose(state.members.params["proj1"]["kernel"][0], initial.members.params["proj1"]["kernel"][0])
    # Members draw different initial weights and different dropout streams.
    assert not np.allclose(initial.members.params["proj1"]["kernel"][0], initial.members.params["proj1"]["kernel"][2])
    assert len({tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in state.members.rng}) == members
    # The member fed NaN skipped its three steps (counted, parameters as initialised); the others (compared with
    # their lone runs above) are untouched by it.
    np.testing.assert_array_equal(state.members.nonfinite_steps, [0, 0, 0, 3])
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.map(lambda x: x[3], state.members.params),
        jax.tree.map(lambda x: x[3], initial.members.params),
    )
    assert all(np.isfinite(x[:3]).all() for x in jax.tree.leaves(state.members.params))


def _pop(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree.pop(path[-1])


def test_clip_stream_covers_every_frame_once_per_epoch_and_resumes_anywhere():
    tracks = clips.Tracks.from_lengths({"x": 7, "a": 45, "b": 23, "c": 100})
    sampler = clips.ClipSampler(tracks, ("a", "b", "c"), clip_len=10, batch_clips=4, seed=3, member_index=1)
    per_epoch = sampler.clips_per_epoch()
    batches = [sampler.batch(s) for s in range(30)]
    rows = np.concatenate([b[0] for b in batches])
    mask = np.concatenate([b[1] for b in batches])
    first = rows[:per_epoch][mask[:per_epoch]]
    own_rows = np.arange(7, 7 + 45 + 23 + 100)
    np.testing.assert_array_equal(np.sort(first), own_rows)  # each frame of the member's tracks exactly once
    second_end = (
        per_epoch
        + clips.ClipSampler(tracks, ("a", "b", "c"), clip_len=10, batch_clips=4, seed=3, member_index=1)
        ._epoch(1)[0]
        .size
    )
    second = rows[per_epoch:second_end][mask[per_epoch:second_end]]
    np.testing.assert_array_equal(np.sort(second), own_rows)
    # Offsets move: the clip boundaries of epoch 2 differ from epoch 1.
    starts = lambda r, m: {tuple(x[y]) for x, y in zip(r, m)}
    assert starts(rows[:per_epoch], mask[:per_epoch]) != starts(rows[per_epoch:second_end], mask[per_epoch:second_end])
    # Real positions of a clip are consecutive frames of one track.
    for r, m in zip(rows, mask):
        assert np.all(np.diff(r[m]) == 1)
    # A fresh sampler (a resumed run) gives the same batch at any step, whatever it was asked before.
    fresh = clips.ClipSampler(tracks, ("a", "b", "c"), clip_len=10, batch_clips=4, seed=3, member_index=1)
    np.testing.assert_array_equal(fresh.batch(17)[0], batches[17][0])
    other = clips.ClipSampler(tracks, ("a", "b", "c"), clip_len=10, batch_clips=4, seed=3, member_index=2)
    assert not np.array_equal(other.batch(0)[0], batches[0][0])


def test_evaluation_windows_average_overlapping_predictions():
    tracks = clips.Tracks.from_lengths({"a": 23, "b": 5})
    rows, mask = clips.evaluation_windows(tracks, ("a", "b"), clip_len=10, stride=5)
    outputs = np.random.default_rng(0).normal(size=(2, len(rows), 10, 3)).astype(np.float32)
    mean = clips.average_windows(outputs, rows, mask, tracks.num_rows)
    for r in range(tracks.num_rows):  # every frame: the plain mean of the windows that contain it
        hits = [outputs[:, w, p] for w in range(len(rows)) for p in range(10) if mask[w, p] and rows[w, p] == r]
        assert hits
        np.testing.assert_allclose(mean[:, r], np.mean(hits, axis=0), rtol=1e-5)


def test_members_follow_the_paper():
    names = [f"v{i}" for i in range(12)] + ["p_left", "p_right"]
    splits = {n: ("Validation_Set" if i % 4 == 0 else "Train_Set") for i, n in enumerate(names)}
    members = clips.select_members(clips.member_names(5), splits, reaction_videos=["v1", "p", "unlabelled"])
    by_name = {m.name: m for m in members}
    assert by_name["official"].heldout == tuple(sorted(n for n in names if splits[n] == "Validation_Set"))
    assert set(by_name["official"].train) | set(by_name["official"].heldout) == set(names)
    assert by_name["whole"].train == tuple(sorted(names)) and not by_name["whole"].heldout
    assert by_name["reaction"].train == ("p_left", "p_right", "v1") and not by_name["reaction"].heldout
    folds = [by_name[f"fold{k}"] for k in range(1, 6)]
    heldout = [t for f in folds for t in f.heldout]
    assert sorted(heldout) == sorted(names)  # every labelled track held out by exactly one fold
    for fold in folds:
        assert not set(fold.train) & set(fold.heldout)
        assert ("p_left" in fold.heldout) == ("p_right" in fold.heldout)
    expected = affwild2.kfold_splits(names, 5, 0)
    assert [f.heldout for f in folds] == [s.validation for s in expected]

    with pytest.raises(clips.MemberError, match="names none of the 14 labelled videos"):
        clips.select_members(["reaction"], splits, reaction_videos=["test_only"])
    with pytest.raises(clips.MemberError, match="needs a reaction-video list"):
        clips.select_members(["whole", "reaction"], splits)
    with pytest.raises(clips.MemberError, match="distinct names"):
        clips.select_members(["official", "fold6"], splits)
    with pytest.raises(clips.MemberError, match="member 'fold2': its .* held-out videos have no labelled AU"):
        counts = {n: 10 for n in names}
        for n in by_name["fold2"].heldout:
            counts[n] = 0
        clips.check_labelled(members, counts, "AU")


def test_member_mesh_and_shardings():
    devices = jax.devices()
    mesh = fusion_job.member_mesh(8, devices * 1)
    assert mesh.shape[fusion_job.MEMBER_AXIS] in (1, 2, 4, 8) and 8 % mesh.shape[fusion_job.MEMBER_AXIS] == 0
    tree = {"stacked": jnp.zeros((8, 3)), "step": jnp.zeros(())}
    shardings = fusion_job.state_shardings(tree, mesh)
    assert shardings["stacked"].spec == jax.sharding.PartitionSpec(fusion_job.MEMBER_AXIS)
    assert shardings["step"].spec == jax.sharding.PartitionSpec()
