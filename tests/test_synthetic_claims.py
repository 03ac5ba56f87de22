"""Tests for the claims study's synthetic releases: each premise switch does to the data what `synthetic.Premises`
says, turning one switch changes nothing else, and the default generator is the default release."""

import dataclasses
import inspect
import json
import pathlib

import av
import numpy as np
import pytest

from abaw_jax import tasks
from abaw_jax.data import synthetic

SMALL = dict(num_videos=10, frames_per_video=90, num_test_videos=0, seed=5, frame_size=(128, 96), crop_size=16)
AU_NAMES = list(tasks.AU.label_names)


def _plan(premises: synthetic.Premises, num_videos: int = 48, seed: int = 1) -> list[synthetic.VideoSpec]:
    return synthetic.plan_videos(num_videos, 90, 0, seed, (320, 240), premises)


def _people(specs, scene: str | None = None) -> list[synthetic.Person]:
    return [p for s in specs if scene in (None, s.scene) for p in s.people]


def _tree(root: pathlib.Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern)) if p.is_file()}


@pytest.fixture(scope="module")
def audio_releases(tmp_path_factory) -> dict[bool, pathlib.Path]:
    """The same small release with the audio premise on (the default) and off."""
    roots = {}
    for on in (True, False):
        roots[on] = tmp_path_factory.mktemp(f"audio_{on}")
        synthetic.generate(roots[on], premises=synthetic.Premises(audio_arousal=on), **SMALL)
    return roots


def test_default_premises_are_the_default_generator(tmp_path):
    """`Premises()` and the `default` preset write the release `generate` wrote before premises existed: no
    premises key in generation.json, the module docstring alone in README.md, the same bytes everywhere."""
    small = dict(num_videos=3, frames_per_video=60, num_test_videos=1, seed=2, frame_size=(128, 96), crop_size=16)
    synthetic.generate(tmp_path / "plain", **small)
    synthetic.generate(tmp_path / "explicit", premises=synthetic.Premises(), **small)
    synthetic.generate(tmp_path / "preset", **(synthetic.preset_arguments("default") | small))
    plain = _tree(tmp_path / "plain", "**/*")
    assert plain and plain == _tree(tmp_path / "explicit", "**/*") == _tree(tmp_path / "preset", "**/*")
    assert "premises" not in json.loads(plain["generation.json"])["arguments"]
    assert "Premises." not in plain["README.md"].decode()
    defaults = {k: v.default for k, v in inspect.signature(synthetic.generate).parameters.items()}
    assert all(defaults[k] == v for k, v in synthetic.preset_arguments("default").items())
    assert synthetic.Premises().changes() == {}


def test_claims_presets_switch_every_premise_and_hold_enough_test_videos():
    on, off = synthetic.PRESETS["claims"], synthetic.PRESETS["claims_control"]
    names = [f.name for f in dataclasses.fields(synthetic.Premises)]
    assert all(getattr(on.premises, n) for n in names) and not any(getattr(off.premises, n) for n in names)
    assert dataclasses.replace(on, premises=off.premises) == off
    for seed in range(3):
        specs = synthetic.plan_videos(on.num_videos, on.frames_per_video, on.num_test_videos, seed, (320, 240))
        for task in tasks.TASK_NAMES:
            assert sum(task in p.tasks for s in specs if s.is_test for p in s.people) >= 12
    with pytest.raises(ValueError, match="claims_control"):
        synthetic.preset_arguments("claim")


def _lag_correlation(people, lag: int) -> float:
    """Correlation of valence with valence `lag` frames later, within each person (each person's mean removed:
    people differ in their mean, which says nothing about time)."""
    a, b = [], []
    for p in people:
        valence = np.where(p.va[:, 0] == -5, np.nan, p.va[:, 0])
        valence -= np.nanmean(valence)
        a.append(valence[:-lag])
        b.append(valence[lag:])
    a, b = np.concatenate(a), np.concatenate(b)
    keep = ~np.isnan(a) & ~np.isnan(b)
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def _window_error_ratio(people, rng) -> float:
    """Mean squared error in valence of a 9-frame mean of what the face shows (its state plus per-frame jitter of
    the module docstring's std) over that of the frame alone."""
    frame, window, label = [], [], []
    for p in people:
        shown = synthetic.valence_arousal_from_aus(p.face + rng.normal(0, 0.12, p.face.shape))[:, 0]
        frame.append(shown)
        window.append(np.convolve(shown, np.ones(9) / 9, mode="same"))
        label.append(p.va[:, 0])
    frame, window, label = (np.concatenate(x) for x in (frame, window, label))
    keep = label != -5
    return float(np.mean((window[keep] - label[keep]) ** 2) / np.mean((frame[keep] - label[keep]) ** 2))


def test_temporal_context_premise():
    with_context, without = _plan(synthetic.Premises()), _plan(synthetic.Premises(temporal_context=False))
    assert _lag_correlation(_people(with_context), 3) > 0.8
    assert abs(_lag_correlation(_people(without), 3)) < 0.1
    # Neighbouring frames add information beyond the frame's own face only with the premise.
    assert _window_error_ratio(_people(with_context), np.random.default_rng(0)) < 0.5
    assert _window_error_ratio(_people(without), np.random.default_rng(0)) > 2.0
    # The control is the same per-frame states in another order.
    for a, b in zip(_people(with_context), _people(without)):
        assert np.array_equal(np.sort(a.intensity, axis=0), np.sort(b.intensity, axis=0))
        assert not np.array_equal(a.intensity, b.intensity)


def _expression_shares(people) -> np.ndarray:
    expr = np.concatenate([p.expr for p in people])
    return np.bincount(expr[expr >= 0], minlength=8) / np.sum(expr >= 0)


def test_reaction_priors_premise():
    happy_or_surprised = [4, 6]
    for on in (True, False):
        specs = _plan(synthetic.Premises(reaction_priors=on), num_videos=160)
        reaction, other = (_expression_shares(_people(specs, scene)) for scene in synthetic.SCENES)
        distance = 0.5 * np.abs(reaction - other).sum()  # total variation
        if on:
            assert distance > 0.3
            assert reaction[happy_or_surprised].sum() > other[happy_or_surprised].sum() + 0.3
        else:
            # The same priors: what remains is the sampling of 160 videos' expression segments.
            assert distance < 0.15


def test_reaction_mapping_premise():
    au25, au26 = AU_NAMES.index("AU25"), AU_NAMES.index("AU26")
    for on in (True, False):
        specs = _plan(synthetic.Premises(reaction_mapping=on))
        for scene in synthetic.SCENES:
            people = _people(specs, scene)
            state = np.concatenate([p.intensity for p in people])
            expr = np.concatenate([p.expr for p in people])
            valence = np.concatenate([p.va[:, 0] for p in people])
            rules = synthetic.expression_from_aus(state > 0.5)
            own = on and scene == "reaction"
            valid = expr >= 0
            # The rules' Fear is labelled Surprise and their Surprise Fear in reaction videos with the premise.
            for rule_label, label in ((3, 6), (6, 3)):
                hit = valid & (rules == rule_label)
                assert hit.sum() > 20
                assert np.all(expr[hit] == (label if own else rule_label))
            assert np.all(expr[valid & ~np.isin(rules, (3, 6))] == rules[valid & ~np.isin(rules, (3, 6))])
            # Valence above the common mapping where the mouth is open, by the label noise only without it.
            common = synthetic.valence_arousal_from_aus(state)[:, 0]
            mouth = (valence != -5) & ((state[:, au25] > 0.5) | (state[:, au26] > 0.5))
            excess = float(np.mean(valence[mouth] - common[mouth]))
            assert excess > 0.2 if own else abs(excess) < 0.01


def test_person_styles_premise():
    plain, styled = _plan(synthetic.Premises()), _plan(synthetic.Premises(person_styles=True))
    slopes = []
    for a, b in zip(_people(plain), _people(styled)):
        assert np.array_equal(a.face, a.intensity)
        # The labels are the same; only what the face shows of them differs.
        assert np.array_equal(a.au, b.au) and np.array_equal(a.va, b.va) and np.array_equal(a.intensity, b.intensity)
        # Where neither is clipped, the face is a line of the state with the person's gain for that AU.
        inside = (b.face > 0) & (b.face < 1) & (b.intensity > 0) & (b.intensity < 1)
        gains = [
            np.polyfit(b.intensity[m, j], b.face[m, j], 1)[0]
            for j in range(12)
            if (m := inside[:, j]).sum() > 10 and b.intensity[m, j].std() > 0.02
        ]
        assert len(gains) >= 3 and all(0.49 < g < 1.51 for g in gains)
        slopes.append(np.median(gains))
    assert np.std(slopes) > 0.05


def _loudness_and_arousal(root: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Per 6-frame window of every one-person video with VA labels: audio RMS and mean arousal label."""
    meta = json.loads((root / "generation.json").read_text())
    loudness, arousal = [], []
    for video in meta["videos"]:
        person = video["people"][0]
        va_file = root / "annotations" / "VA_Estimation_Challenge" / person["split"] / f"{person['name']}.txt"
        if len(video["people"]) != 1 or not va_file.exists():
            continue
        va = np.loadtxt(va_file, delimiter=",", skiprows=1)
        with av.open(str(root / "videos" / f"{video['video']}.mp4")) as container:
            rate = container.streams.audio[0].rate
            audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
        for start in range(0, len(va) - 5, 6):
            rows = va[start : start + 6]
            if (rows != -5).all():
                chunk = audio[int(start / meta["fps"] * rate) : int((start + 6) / meta["fps"] * rate)]
                loudness.append(np.sqrt(np.mean(chunk**2)))
                arousal.append(rows[:, 1].mean())
    return np.array(loudness), np.array(arousal)


def test_audio_arousal_premise(audio_releases):
    on_loudness, on_arousal = _loudness_and_arousal(audio_releases[True])
    off_loudness, off_arousal = _loudness_and_arousal(audio_releases[False])
    assert len(on_arousal) > 60 and np.array_equal(on_arousal, off_arousal)
    assert np.corrcoef(on_loudness, on_arousal)[0, 1] > 0.7
    assert abs(np.corrcoef(off_loudness, off_arousal)[0, 1]) < 0.3
    # Off, the audio is as loud and as varied a voice, following arousal that is not the labels'.
    assert 0.5 < off_loudness.std() / on_loudness.std() < 2.0


def test_audio_premise_changes_only_the_audio(audio_releases):
    on, off = audio_releases[True], audio_releases[False]
    for pattern in ("annotations/**/*.txt", "cropped_aligned/**/*.jpg"):
        assert _tree(on, pattern) and _tree(on, pattern) == _tree(off, pattern)
    assert json.loads((off / "generation.json").read_text())["arguments"]["premises"]["audio_arousal"] is False
    assert "Premises." in (off / "README.md").read_text()
