"""Task losses against torch.nn's weighted BCE / CE and a numpy CCC; class weights by the seed team's rule."""

import ast
import pathlib

import numpy as np
import pytest
import torch

import abaw_jax.models
from abaw_jax.eval import losses


def test_au_loss_is_torch_bce_with_pos_weight_on_valid_frames():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30, 12)).astype(np.float32)
    labels = (rng.uniform(size=(4, 30, 12)) < 0.3).astype(np.int8)
    mask = rng.uniform(size=(4, 30)) < 0.7
    w = rng.uniform(1, 5, size=12).astype(np.float32)
    ours = float(losses.au_loss(logits, labels, mask, w))
    keep = mask.reshape(-1)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w))(
        torch.tensor(logits.reshape(-1, 12)[keep]), torch.tensor(labels.reshape(-1, 12)[keep], dtype=torch.float32)
    )
    assert ours == pytest.approx(float(ref), rel=1e-5)


def test_expr_loss_is_torch_weighted_cross_entropy_on_valid_frames():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 40, 8)).astype(np.float32)
    labels = rng.integers(0, 8, size=(3, 40))
    mask = rng.uniform(size=(3, 40)) < 0.6
    labels[~mask] = -1  # invalid rows carry the marker and must not matter
    w = rng.uniform(1, 5, size=8).astype(np.float32)
    ours = float(losses.expr_loss(logits, labels, mask, w))
    keep = mask.reshape(-1)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))(
        torch.tensor(logits.reshape(-1, 8)[keep]), torch.tensor(labels.reshape(-1)[keep])
    )
    assert ours == pytest.approx(float(ref), rel=1e-5)


def test_va_loss_is_two_minus_ccc_sum():
    rng = np.random.default_rng(2)
    labels = rng.uniform(-1, 1, size=(2, 50, 2)).astype(np.float32)
    values = np.tanh(labels + 0.4 * rng.normal(size=labels.shape)).astype(np.float32)
    mask = np.ones((2, 50), bool)
    x, y = values.reshape(-1, 2).astype(np.float64), labels.reshape(-1, 2).astype(np.float64)
    ccc = [
        2
        * np.mean((x[:, c] - x[:, c].mean()) * (y[:, c] - y[:, c].mean()))
        / (x[:, c].var() + y[:, c].var() + (x[:, c].mean() - y[:, c].mean()) ** 2)
        for c in range(2)
    ]
    assert float(losses.va_loss(values, labels, mask)) == pytest.approx(2 - sum(ccc), rel=1e-5)


def test_class_weights_max_over_count_ignoring_invalid_rows():
    labels = np.array([0, 0, 0, 0, 4, 4, 7, 3, 3, 3])
    valid = np.ones(10, bool)
    valid[[7, 8]] = False  # two of the class-3 rows are invalid
    w = losses.class_weights("EXPR", labels, valid)
    np.testing.assert_allclose(w[[0, 4, 7, 3]], [1.0, 2.0, 4.0, 4.0])
    assert w[1] == w.max()  # unseen classes get the largest weight
    au = np.array([[1, 0], [1, 1], [1, 0], [0, 0]])[:, [0, 1] * 6]
    np.testing.assert_allclose(losses.class_weights("AU", au, np.ones(4, bool))[:2], [1.0, 3.0])
    with pytest.raises(ValueError, match="no positive AU labels"):
        losses.class_weights("AU", np.zeros((3, 12)), np.ones(3, bool))


def test_models_import_nothing_from_evaluation():
    """Models sit below evaluation: the losses live in eval/ beside the metrics they share (CCC)."""
    upward = []
    for path in sorted(pathlib.Path(abaw_jax.models.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            upward += [f"{path.name}:{node.lineno}" for name in names if name.startswith("abaw_jax.eval")]
    assert upward == []


def test_au_loss_masks_unannotated_aus_per_label():
    """AU labels of -1 (an AU the source does not code) leave the loss, whatever the logits; never read as 0."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(20, 12)).astype(np.float32)
    labels = (rng.uniform(size=(20, 12)) < 0.4).astype(np.int8)
    labels[:, 10:] = -1
    labels[rng.uniform(size=(20, 12)) < 0.1] = -1
    frame_mask = rng.uniform(size=20) < 0.8
    w = rng.uniform(1, 3, size=12).astype(np.float32)
    keep = frame_mask[:, None] & (labels >= 0)
    per = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w), reduction="none")(
        torch.tensor(logits), torch.tensor(np.maximum(labels, 0), dtype=torch.float32)
    ).numpy()
    assert float(losses.au_loss(logits, labels, frame_mask, w)) == pytest.approx(per[keep].mean(), rel=1e-5)
    changed = logits.copy()
    changed[:, 10:] += 5.0
    assert float(losses.au_loss(changed, labels, frame_mask, w)) == pytest.approx(per[keep].mean(), rel=1e-5)
    zeros = np.where(labels < 0, 0, labels)
    assert float(losses.au_loss(logits, zeros, frame_mask, w)) != pytest.approx(per[keep].mean(), rel=1e-3)
    per_label_mask = keep.copy()
    per_label_mask[:, 0] = False
    assert float(losses.au_loss(logits, zeros, per_label_mask, w)) == pytest.approx(
        per[per_label_mask].mean(), rel=1e-5
    )
