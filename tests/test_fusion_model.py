"""TMF against the same architecture built from torch.nn modules (benchmarks/torch_tmf.py)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from abaw_jax import tasks
from abaw_jax.eval import losses
from abaw_jax.jobs import fusion as fusion_job
from abaw_jax.models import fusion
from benchmarks.torch_tmf import TorchTMF, to_flax

CONFIG = fusion.TMFConfig(
    input_dim=24, num_outputs=8, proj_dim=32, width=16, depth=2, num_heads=4, mlp_dim=20, head_dim=12
)


def _inputs(seed=0, batch=3, length=10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, CONFIG.input_dim)).astype(np.float32)
    face = rng.random((batch, length)) > 0.25
    mask = np.ones((batch, length), bool)
    mask[1, 6:] = False  # a clip padded at its end
    mask[2, :3] = False  # and one at its start (random clip offsets)
    return x, face, mask


def _torch_model(config, seed=0):
    torch.manual_seed(seed)
    model = TorchTMF(config)
    with torch.no_grad():  # non-trivial running statistics, so eval mode really reads them
        model.head_norm.running_mean.uniform_(-0.5, 0.5)
        model.head_norm.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("bounded", [False, True])
def test_eval_outputs_match_torch(bounded):
    config = fusion.TMFConfig(**{**CONFIG.__dict__, "bounded": bounded, "num_outputs": 2 if bounded else 8})
    model = _torch_model(config).eval()
    x, face, mask = _inputs()
    with torch.no_grad():
        expected = model(torch.tensor(x), torch.tensor(face), torch.tensor(mask)).numpy()
    ours = np.asarray(fusion.TMF(config).apply(to_flax(model), x, face, mask, train=False))
    np.testing.assert_allclose(ours[mask], expected[mask], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # Padded keys are ignored: changing padded frames leaves the real frames' outputs alone.
    x2 = np.where(mask[..., None], x, 100.0)
    again = np.asarray(fusion.TMF(config).apply(to_flax(model), x2, face, mask, train=False))
    np.testing.assert_allclose(again[mask], ours[mask], rtol=1e-6, atol=1e-6)


def test_paper_sizes_match_torch():
    config = fusion.TMFConfig(input_dim=40, num_outputs=12)  # 256 / 128 / 4 layers / 4 heads / FF 128 / 64
    model = _torch_model(config, seed=1).eval()
    x, face, mask = (
        np.random.default_rng(1).normal(size=(2, 100, 40)).astype(np.float32),
        np.ones((2, 100), bool),
        np.ones((2, 100), bool),
    )
    with torch.no_grad():
        expected = model(torch.tensor(x), torch.tensor(face), torch.tensor(mask)).numpy()
    ours = np.asarray(fusion.TMF(config).apply(to_flax(model), x, face, mask))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    n_torch = sum(p.numel() for p in model.parameters())
    assert n_torch == sum(v.size for v in jax.tree.leaves(fusion.init_variables(config, jax.random.key(0))["params"]))


def test_training_steps_match_torch_adamw_and_batchnorm():
    """Two AdamW steps (dropout off) of the job's member step: gradients, parameters and BatchNorm running
    statistics (momentum 0.1, unbiased variance, padded frames excluded) as torch computes them."""
    config = fusion.TMFConfig(**{**CONFIG.__dict__, "dropout": 0.0})
    model = _torch_model(config, seed=2).train()
    variables = to_flax(model)
    rng = np.random.default_rng(3)
    x, face, mask = _inputs(seed=3)
    labels = rng.integers(0, 8, size=mask.shape)
    valid = rng.random(mask.shape) > 0.1
    weights = rng.uniform(0.5, 3.0, 8).astype(np.float32)
    lr, wd = 1e-3, 0.05

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    keep = mask & face & valid
    torch_grads = None
    for _ in range(2):
        optimizer.zero_grad()
        out = model(torch.tensor(x), torch.tensor(face), torch.tensor(mask))
        loss = torch.nn.functional.cross_entropy(
            out[torch.tensor(keep)], torch.tensor(labels[keep]), weight=torch.tensor(weights)
        )
        loss.backward()
        if torch_grads is None:
            torch_grads = to_flax_grads(model)
            torch_stats = to_flax(model)["batch_stats"]
        optimizer.step()

    tx = fusion_job.make_optimizer(lr, wd)
    member = fusion_job.MemberState(
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        rng=jax.random.key(0),
        feature_mean=jnp.zeros(CONFIG.input_dim),
        feature_std=jnp.ones(CONFIG.input_dim),
        class_weights=jnp.asarray(weights),
        nonfinite_steps=jnp.zeros((), jnp.int32),
    )
    batch = {"features": x, "face": face, "mask": mask, "labels": labels, "valid": valid}
    tmf = fusion.TMF(config)
    first_grads = _member_grads(member, batch, tmf)
    for i in range(2):
        member, step_metrics = fusion_job.member_train_step(member, batch, model=tmf, task=tasks.EXPR, tx=tx)
        if i == 0:
            stats = member.batch_stats
    np.testing.assert_allclose(float(step_metrics["loss"]), loss.item(), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), first_grads, torch_grads)
    expected = to_flax(model)
    # Some biases have a gradient of exactly 0 in exact arithmetic: the BatchNorm removes any constant shift of
    # its input (the head's first bias and the last LayerNorm's bias), and the attention key bias adds the same
    # q.b to every key's logit. Adam's normalised update of them is the sign of rounding noise in either
    # framework, so only its size is comparable.
    noise_driven = [("head1", "bias"), (f"layer{config.depth - 1}", "norm2", "bias")]
    noise_driven += [(f"layer{i}", "attention", "key", "bias") for i in range(config.depth)]
    for path in noise_driven:
        ours, theirs = _pop(member.params, path), _pop(expected["params"], path)
        np.testing.assert_array_less(np.abs(ours - theirs), 4 * lr)  # 2 steps of at most ~2 lr
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member.params, expected["params"])
    # Running statistics after the first step (the second step's batch mean carries the noise-driven bias).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats, torch_stats)
    np.testing.assert_allclose(
        member.batch_stats["head_norm"]["var"], expected["batch_stats"]["head_norm"]["var"], rtol=1e-5
    )


def _pop(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree.pop(path[-1])


def _member_grads(member, batch, tmf):
    """Gradients of the loss member_train_step minimises, at the member's parameters."""

    def loss_fn(params):
        outputs, _ = tmf.apply(
            {"params": params, "batch_stats": member.batch_stats},
            batch["features"],
            batch["face"],
            batch["mask"],
            train=True,
            mutable=["batch_stats"],
        )
        keep = batch["mask"] & batch["face"] & batch["valid"]
        return losses.task_loss(tasks.EXPR, outputs, batch["labels"], keep, member.class_weights)

    return jax.grad(loss_fn)(member.params)


def to_flax_grads(model):
    """The .grad of every torch parameter in our layout (to_flax on a copy whose weights are the grads)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(twin.parameters(), model.parameters()):
            p.copy_(g.grad)
    return to_flax(twin)["params"]


def test_init_is_torch_like():
    config = fusion.TMFConfig(input_dim=300, num_outputs=8)
    params = fusion.init_variables(config, jax.random.key(0))["params"]
    # Every layer starts as a copy of the first, as nn.TransformerEncoder's deep copy does.
    jax.tree.map(np.testing.assert_array_equal, params["layer0"], params["layer3"])
    torch_model = TorchTMF(config)
    bounds = {"proj1": 1 / np.sqrt(300), "proj2": 1 / np.sqrt(256), "head2": 1 / np.sqrt(64)}
    for name, bound in bounds.items():
        kernel = np.asarray(params[name]["kernel"])
        assert bound * 0.95 < np.abs(kernel).max() <= bound
        assert np.abs(getattr(torch_model, name).weight.detach().numpy()).max() <= bound
    q = np.asarray(params["layer0"]["attention"]["query"]["kernel"])
    in_proj = torch_model.encoder.layers[0].self_attn.in_proj_weight.detach().numpy()
    assert np.isclose(np.abs(q).max(), np.abs(in_proj).max(), rtol=0.05)
