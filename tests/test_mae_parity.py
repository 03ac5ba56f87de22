"""Our Flax MAE and ViT against code no one here wrote: transformers' ViTMAE and timm's ViT.

Weights come from randomly initialised PyTorch models (LayerNorm scales and all biases perturbed away from
their 1/0 init, so a swapped or dropped norm/bias would show), converted with `torch_weights`. Both sides
get the same images and the same masking noise; loss, reconstruction, mask and every encoder hidden state
must agree within 1e-4 relative in fp32. The position tables are transformers' own sin-cos tables, and
`sincos_pos_embed_2d` is checked against them separately.
"""

import jax
import numpy as np
import pytest
import skimage.data

from abaw_jax.models import torch_weights as tw
from abaw_jax.models.mae import MAE, MAEConfig, mae_config, patchify
from abaw_jax.models.vit import ViT, ViTConfig, sincos_pos_embed_2d
from abaw_jax.torch_compat import import_timm, prepare_torch_imports

prepare_torch_imports()
import torch  # noqa: E402
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel  # noqa: E402
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding  # noqa: E402

RTOL = 1e-4
# Entries that cancel to near zero keep the absolute rounding error of the O(max) values they came from,
# so a purely relative bound is meaningless there. 1e-5 of the tensor's largest magnitude is ~100 fp32
# ulps at that scale, and still 10x below what tanh-GELU or LayerNorm eps 1e-5 change in these tests.
ATOL_FRACTION = 1e-5
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NUM_CLASSES = 7

SMALL_HF = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
    image_size=32,
    patch_size=8,
    mask_ratio=0.75,
)


def assert_close(ours, theirs, what: str):
    ours, theirs = np.asarray(ours), np.asarray(theirs.detach().numpy() if hasattr(theirs, "detach") else theirs)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL_FRACTION * np.abs(theirs).max(), err_msg=what)


def hf_sincos(width: int, grid: int) -> np.ndarray:
    """transformers' table with the half rotation `ViTMAEEmbeddings.initialize_weights` applies."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, embed_dim=width, cls_token=True)
    return torch.cat([table[..., width // 2 :], table[..., : width // 2]], dim=-1).numpy()


def images(size: int, batch: int) -> np.ndarray:
    """Normalised NHWC crops of the astronaut photo, each at a different offset."""
    photo = skimage.data.astronaut().astype(np.float32) / 255.0
    step = photo.shape[0] // (size + size // 8)
    crops = [photo[i * step :: step, i * step :: step][:size, :size] for i in range(batch)]
    return ((np.stack(crops) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def perturb_norms_and_biases(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=generator))
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=generator))


def hf_mae(seed: int, activation_scale: float = 1.0, **config) -> ViTMAEForPreTraining:
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(ViTMAEConfig(layer_norm_eps=1e-6, **config)).eval()
    perturb_norms_and_biases(model, seed)
    grid = model.config.image_size // model.config.patch_size
    with torch.no_grad():
        # transformers v5 leaves both tables at zero when building from a config; use its real ones.
        model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(hf_sincos(model.config.hidden_size, grid)))
        model.decoder.decoder_pos_embed.copy_(torch.from_numpy(hf_sincos(model.config.decoder_hidden_size, grid)))
        torch.nn.init.normal_(model.vit.embeddings.cls_token, std=0.02)
        torch.nn.init.normal_(model.decoder.mask_token, std=0.02)
        embeddings = model.vit.embeddings
        for tensor in (
            embeddings.patch_embeddings.projection.weight,
            embeddings.patch_embeddings.projection.bias,
            embeddings.cls_token,
            embeddings.position_embeddings,
        ):
            tensor.mul_(activation_scale)
    return model


def our_config(hf: ViTMAEConfig) -> MAEConfig:
    encoder = ViTConfig(
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        width=hf.hidden_size,
        depth=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        mlp_dim=hf.intermediate_size,
    )
    return MAEConfig(
        encoder=encoder,
        decoder_width=hf.decoder_hidden_size,
        decoder_depth=hf.decoder_num_hidden_layers,
        decoder_heads=hf.decoder_num_attention_heads,
        decoder_mlp_dim=hf.decoder_intermediate_size,
        mask_ratio=hf.mask_ratio,
        norm_pix_loss=hf.norm_pix_loss,
    )


def template(model, *inputs):
    return jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]


def run_both(hf_model: ViTMAEForPreTraining, batch: int, seed: int):
    config = our_config(hf_model.config)
    x = images(config.encoder.image_size, batch)
    noise = np.random.RandomState(seed).rand(batch, config.encoder.num_patches).astype(np.float32)
    model = MAE(config)
    official = tw.hf_to_official(hf_model.state_dict())
    params, report = tw.official_to_flax(official, template(model, x, noise))
    ours = jax.jit(model.apply)({"params": params}, x, noise)
    with torch.no_grad():
        theirs = hf_model(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), noise=torch.from_numpy(noise), output_hidden_states=True
        )
    return dict(config=config, params=params, official=official, report=report, ours=ours, theirs=theirs)


def assert_mae_outputs_match(run):
    ours, theirs = run["ours"], run["theirs"]
    assert run["report"] == {"missing": [], "unexpected": []}
    assert_close(ours.loss, theirs.loss, "loss")
    np.testing.assert_array_equal(np.asarray(ours.mask), theirs.mask.numpy())
    assert_close(ours.pred, theirs.logits, "reconstruction")
    assert len(ours.hidden_states) == len(theirs.hidden_states) == run["config"].encoder.depth + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert_close(a, b, f"encoder hidden state {i}")


@pytest.mark.parametrize("width,grid", [(64, 4), (32, 4), (768, 14), (512, 14)])
def test_sincos_table_matches_transformers(width, grid):
    np.testing.assert_allclose(sincos_pos_embed_2d(width, grid), hf_sincos(width, grid), rtol=0, atol=1e-6)


def test_patchify_matches_transformers():
    hf_model = ViTMAEForPreTraining(ViTMAEConfig(**SMALL_HF))
    x = images(32, 3)
    expected = hf_model.patchify(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_array_equal(np.asarray(patchify(x, 8)), expected)


# activation_scale 1e-3 shrinks the patch/cls/position embeddings so the first LayerNorms see variances near
# their eps: that case pins eps to 1e-6 by a wide margin, where ordinary activations (variance ~1) only
# just notice eps 1e-5.
@pytest.mark.parametrize("norm_pix_loss,activation_scale", [(True, 1.0), (False, 1.0), (True, 1e-3)])
def test_small_mae_matches_transformers(norm_pix_loss, activation_scale):
    hf_model = hf_mae(0, activation_scale, norm_pix_loss=norm_pix_loss, **SMALL_HF)
    assert_mae_outputs_match(run_both(hf_model, batch=3, seed=1))


@pytest.fixture(scope="module")
def base_run():
    hf_model = hf_mae(0, norm_pix_loss=True)
    return run_both(hf_model, batch=2, seed=2)


def test_base_config_is_official_vit_b(base_run):
    assert base_run["config"] == mae_config("base", norm_pix_loss=True)


def test_base_mae_matches_transformers(base_run):
    assert_mae_outputs_match(base_run)


def test_mae_export_import_is_identity(base_run):
    exported = tw.flax_to_official(base_run["params"])
    assert sorted(exported) == sorted(base_run["official"])
    for key, value in base_run["official"].items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    reimported, report = tw.official_to_flax(exported, base_run["params"])
    assert report == {"missing": [], "unexpected": []}
    jax.tree.map(np.testing.assert_array_equal, reimported, base_run["params"])


@pytest.fixture(scope="module")
def timm_module():
    return import_timm()


def timm_vit(timm, seed: int, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs).eval()
    perturb_norms_and_biases(model, seed)
    return model


def test_timm_token_encoder_matches(timm_module):
    theirs = timm_vit(timm_module, 3, num_classes=0)
    model = ViT(ViTConfig(pool="token"))
    x = images(224, 1)
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    params, report = tw.official_to_flax(state, template(model, x))
    assert report == {"missing": [], "unexpected": []}
    with torch.no_grad():
        expected = theirs.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert_close(jax.jit(model.apply)({"params": params}, x), expected, "final-norm tokens")


def test_timm_finetuned_gap_encoder_matches_and_round_trips(timm_module):
    theirs = timm_vit(timm_module, 4, global_pool="avg", fc_norm=True, num_classes=NUM_CLASSES)
    with torch.no_grad():
        torch.nn.init.normal_(theirs.head.weight, std=0.05)  # timm zero-initialises the head
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    assert "fc_norm.weight" in state and "norm.weight" not in state
    model = ViT(ViTConfig(pool="gap", num_classes=NUM_CLASSES))
    x = images(224, 1)
    params, report = tw.official_to_flax(state, template(model, x))
    assert report == {"missing": [], "unexpected": []}
    with torch.no_grad():
        tokens = theirs.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        features, logits = theirs.forward_head(tokens, pre_logits=True), theirs.forward_head(tokens)
    logits_and_features = jax.jit(lambda p, x: (model.apply(p, x), model.apply(p, x, method=ViT.features)))
    ours_logits, ours_features = logits_and_features({"params": params}, x)
    assert_close(ours_logits, logits, "logits")
    assert_close(ours_features, features, "pooled features")
    exported = tw.flax_to_official(params)
    assert sorted(exported) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_transformers_vitmae_model_import():
    torch.manual_seed(5)
    # mask_ratio 0 and increasing noise keep every patch in its place, so the output is the plain encoder's.
    theirs = ViTMAEModel(ViTMAEConfig(layer_norm_eps=1e-6, **(SMALL_HF | {"mask_ratio": 0.0}))).eval()
    perturb_norms_and_biases(theirs, 5)
    with torch.no_grad():
        theirs.embeddings.position_embeddings.copy_(torch.from_numpy(hf_sincos(64, 4)))
    model = ViT(ViTConfig(image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128))
    x = images(32, 2)
    params, report = tw.official_to_flax(tw.hf_to_official(theirs.state_dict()), template(model, x))
    assert report == {"missing": [], "unexpected": []}
    noise = torch.arange(16, dtype=torch.float32).repeat(2, 1)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)), noise=noise, output_hidden_states=True)
    assert_close(jax.jit(model.apply)({"params": params}, x), expected.last_hidden_state, "final-norm tokens")
    _, hidden = jax.jit(lambda p, x: model.apply(p, x, method=lambda m, x: m.encode(m.embed_patches(x))))(
        {"params": params}, x
    )
    for i, (a, b) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert_close(a, b, f"hidden state {i}")


@pytest.fixture(scope="module")
def small_official():
    return tw.hf_to_official(hf_mae(6, **SMALL_HF).state_dict())


def small_encoder(pool: str, num_classes: int = 0) -> ViT:
    return ViT(
        ViTConfig(
            image_size=32, patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128, pool=pool, num_classes=num_classes
        )
    )


def test_mismatch_error_names_every_bad_key(small_official):
    state = dict(small_official)
    del state["blocks.1.attn.qkv.bias"]
    state["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    state["norm.weight"] = np.ones(65, np.float32)
    model = MAE(our_config(ViTMAEConfig(**SMALL_HF)))
    x, noise = images(32, 1), np.zeros((1, 16), np.float32)
    with pytest.raises(tw.WeightMismatchError) as error:
        tw.official_to_flax(state, template(model, x, noise))
    message = str(error.value)
    for name in ("blocks.1.attn.qkv.bias", "blocks.0.extra.weight", "norm.weight", "(65,)", "(64,)"):
        assert name in message
    del state["blocks.0.extra.weight"]
    state["blocks.1.attn.qkv.bias"] = small_official["blocks.1.attn.qkv.bias"]
    with pytest.raises(tw.WeightMismatchError, match=r"norm\.weight"):
        tw.official_to_flax(state, template(model, x, noise), strict=False)


def test_pretrained_encoder_into_gap_model_keeps_fresh_head(small_official):
    model = small_encoder("gap", num_classes=3)
    x = images(32, 1)
    fresh = jax.jit(model.init)(jax.random.key(1), x)["params"]
    params, report = tw.official_to_flax(small_official, fresh, strict=False)
    assert report["missing"] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias", "mask_token", "decoder_pred.weight"} <= set(report["unexpected"])
    for name in ("fc_norm", "head"):
        jax.tree.map(np.testing.assert_array_equal, params[name], fresh[name])
    np.testing.assert_array_equal(
        params["blocks_1"]["mlp"]["fc2"]["kernel"], small_official["blocks.1.mlp.fc2.weight"].T
    )
    with pytest.raises(tw.WeightMismatchError, match=r"fc_norm\.bias.*head\.weight"):
        tw.official_to_flax(small_official, template(model, x), strict=False)


def test_official_pth_round_trip(small_official, tmp_path):
    source = tmp_path / "checkpoint-799.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in small_official.items()}, "epoch": 799}, source)
    state = tw.load_torch_checkpoint(str(source))
    model = MAE(our_config(ViTMAEConfig(**SMALL_HF)))
    params, _ = tw.official_to_flax(state, template(model, images(32, 1), np.zeros((1, 16), np.float32)))
    target = tmp_path / "exported.pth"
    tw.save_official_checkpoint(tw.flax_to_official(params), str(target))
    written = torch.load(target, weights_only=True)["model"]
    assert sorted(written) == sorted(small_official)
    for key, value in small_official.items():
        np.testing.assert_array_equal(written[key].numpy(), value, err_msg=key)
