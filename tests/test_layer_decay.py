"""Layer-wise lr decay and weight-decay groups against timm's `param_groups_layer_decay` on a timm ViT."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from abaw_jax.models import params_io, torch_weights
from abaw_jax.models.vit import ViTConfig
from abaw_jax.runtime import optimizer
from abaw_jax.torch_compat import import_timm

DEPTH = 3
CONFIG = ViTConfig(
    image_size=16,
    patch_size=8,
    width=32,
    depth=DEPTH,
    num_heads=2,
    mlp_dim=64,
    pool="gap",
    num_classes=5,
    pos_embed_trainable=True,
)


@pytest.fixture(scope="module")
def timm_groups():
    import_timm()
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim import param_groups_layer_decay

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16,
        patch_size=8,
        embed_dim=32,
        depth=DEPTH,
        num_heads=2,
        mlp_ratio=2.0,
        global_pool="avg",
        num_classes=5,
    )
    groups = param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.65, no_weight_decay_list=model.no_weight_decay()
    )
    names = {id(p): n for n, p in model.named_parameters()}
    return model, groups, {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.fixture(scope="module")
def params():
    return params_io.init_params(CONFIG)


def _official(tree) -> dict[str, float]:
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in torch_weights.flax_to_official(tree).items()}


def test_lr_scales_and_decay_mask_match_timm(timm_groups, params):
    _, _, reference = timm_groups
    scales = _official(optimizer.layer_decay_scales(params, DEPTH, 0.65))
    decays = _official(jax.tree.map(float, optimizer.weight_decay_mask(params)))
    assert set(scales) == set(reference)
    for name, (lr_scale, weight_decay) in reference.items():
        assert scales[name] == pytest.approx(lr_scale, rel=1e-6), name
        assert decays[name] == (weight_decay > 0), name
    # The rule spreads over depth + 2 distinct scales, the stem lowest.
    assert len(set(scales.values())) == DEPTH + 2
    assert scales["cls_token"] == pytest.approx(0.65 ** (DEPTH + 1))


def test_one_adamw_step_matches_torch_with_timm_groups(timm_groups, params):
    import torch

    model, groups, _ = timm_groups
    state = torch_weights.flax_to_official(params)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    rng = np.random.default_rng(0)
    grads_official = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in state.items()}

    lr = 1e-2
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    torch_opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for name, p in model.named_parameters():
        p.grad = torch.from_numpy(grads_official[name])
    torch_opt.step()
    expected = {n: p.detach().numpy() for n, p in model.named_parameters()}

    grads, _ = torch_weights.official_to_flax(grads_official, params)
    tx = optimizer.make_optimizer(
        optax.constant_schedule(lr),
        b1=0.9,
        b2=0.999,
        weight_decay=0.05,
        lr_scales=optimizer.layer_decay_scales(params, DEPTH, 0.65),
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    ours = torch_weights.flax_to_official(optax.apply_updates(params, updates))
    for name, value in expected.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_layer_ids():
    assert optimizer.vit_layer_id(("pos_embed",), 12) == 0
    assert optimizer.vit_layer_id(("patch_embed", "kernel"), 12) == 0
    assert optimizer.vit_layer_id(("blocks_11", "mlp", "fc1", "bias"), 12) == 12
    assert optimizer.vit_layer_id(("head", "kernel"), 12) == 13
    flat = traverse_util.flatten_dict(optimizer.layer_decay_scales({"head": {"bias": jnp.zeros(2)}}, 12, 0.65))
    assert flat[("head", "bias")] == 1.0
