"""Simulated ensemble predictions from labels: test data for the evaluation stage without trained models.

`simulate_outputs` turns one track's labels into what a member might predict: the label signal (AU/EXPR as
logits, VA as values) at a member-specific strength, plus a slow member-specific drift (so members disagree and
voting matters) and independent per-frame noise (so smoothing matters); frames without a face get the model's
prior, whatever the label. `write_release_predictions` writes a predictions folder
(`abaw_jax.data.predictions`) for every labelled and test track of a release, with the paper's members and
roles: fold1..fold5 (each holding out its fold, `affwild2.kfold_splits`), official (holding out
Validation_Set), whole, and reaction (trained on the reaction-list videos, strongest on them).
"""

from __future__ import annotations

import pathlib

import numpy as np
from scipy import ndimage

from abaw_jax import tasks
from abaw_jax.data import affwild2
from abaw_jax.data.predictions import PredictionWriter

FOLD_MEMBERS = tuple(f"fold{k}" for k in range(1, 6))
MEMBERS = FOLD_MEMBERS + ("official", "whole", "reaction")


def _drift(rng: np.random.Generator, num_frames: int, channels: int, std: float) -> np.ndarray:
    walk = ndimage.gaussian_filter1d(rng.normal(size=(num_frames, channels)), 25.0, axis=0, mode="nearest")
    return walk * std / max(float(walk.std()), 1e-8)


def simulate_outputs(
    task: str, labels: np.ndarray, valid: np.ndarray, face: np.ndarray, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """(N, C) float32 member outputs for labels (N, ...) in the annotation encoding: probabilities or values."""
    task_facts = tasks.get_task(task)
    num_frames, valid, face = len(labels), np.asarray(valid, bool), np.asarray(face, bool)
    channels = task_facts.num_outputs
    noise = _drift(rng, num_frames, channels, 0.6) + rng.normal(0, 1.3, (num_frames, channels))
    if task_facts.kind == "binary":
        signal = np.where(valid[:, None], 2.0 * np.asarray(labels, np.float64) - 1.0, 0.0)
        logits = np.where(face[:, None], 1.6 * strength * signal - 0.3 + noise, -1.0 + 0.1 * noise)
        outputs = 1.0 / (1.0 + np.exp(-logits))
    elif task_facts.kind == "multiclass":
        signal = np.where(valid[:, None], np.eye(channels)[np.clip(labels, 0, channels - 1)], 0.0)
        logits = np.where(face[:, None], 2.2 * strength * signal + noise, 0.1 * noise)
        logits -= logits.max(axis=1, keepdims=True)
        outputs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        signal = np.where(valid[:, None], np.asarray(labels, np.float64), 0.0)
        values = 0.8 * min(strength, 1.2) * signal + 0.25 * noise
        outputs = np.clip(np.where(face[:, None], values, 0.05 * noise), -1, 1)
    return outputs.astype(np.float32)


def write_release_predictions(
    root: str | pathlib.Path, directory: str | pathlib.Path, task: str, seed: int = 0
) -> PredictionWriter:
    """A predictions folder for a synthetic release (`abaw_jax.data.synthetic` layout) at `directory`."""
    root, task_facts = pathlib.Path(root), tasks.get_task(task)
    task_dir = affwild2.find_task_dir(root / "annotations", task_facts.name)
    crops = root / "cropped_aligned"
    reaction = affwild2.read_video_list(root / "reaction_videos.txt")
    tracks: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    for split in affwild2.SPLITS:
        for path in sorted((task_dir / split).glob("*.txt")):
            labels, valid = affwild2.parse_annotation_file(path, task_facts.name)
            tracks[path.stem] = (split, labels, valid)
    test_dir = root / "test_set"
    template = affwild2.read_submission_template(
        test_dir / "prediction_files_format" / task_facts.example_file, task_facts.name
    )
    truth_dir = test_dir / "ground_truth" / task_facts.folders[0]
    for name in affwild2.read_video_list(test_dir / "names_of_videos_in_each_test_set" / task_facts.test_list_file):
        labels, valid = affwild2.parse_annotation_file(truth_dir / f"{name}.txt", task_facts.name)
        count = len(template.frames_of(name))
        tracks[name] = ("test", labels[:count], valid[:count])
    labelled = [t for t, (split, _, _) in tracks.items() if split != "test"]
    folds = affwild2.kfold_splits(labelled, len(FOLD_MEMBERS), seed)
    writer = PredictionWriter(directory, task_facts.name)
    rng = np.random.default_rng(seed)
    for track, (split, labels, valid) in tracks.items():
        face = np.zeros(len(labels), bool)
        frames = affwild2.list_crops(crops / track) if (crops / track).is_dir() else np.zeros(0, np.int64)
        face[frames[frames <= len(labels)] - 1] = True
        writer.add_track(track, split, face)
        on_reaction = affwild2.is_listed(track, reaction)
        for member in MEMBERS:
            if split == "test":
                role = "test"
            elif member in FOLD_MEMBERS:
                role = "heldout" if track in folds[FOLD_MEMBERS.index(member)].validation else "train"
            elif member == "official":
                role = "heldout" if split == "Validation_Set" else "train"
            elif member == "whole":
                role = "train"
            else:
                role = "train" if on_reaction else "other"
            strength = (1.4 if on_reaction else 0.5) if member == "reaction" else 1.0
            writer.write(member, track, simulate_outputs(task_facts.name, labels, valid, face, rng, strength), role)
    writer.flush()
    return writer
