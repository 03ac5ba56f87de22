"""Public face-MAE checkpoints in the official MAE layout load through `load_encoder` as a fine-tuning start.

The layouts are those of the facebookresearch MAE release and of the face MAEs built on its code: MAE-Face
(the seed team's ViT-B, `{'model': state}` loaded into a global-pool timm ViT) and FMAE / FMAE-IAT (the same
layout; its fine-tuned files carry `AU_head` / `ID_head`). Each file is written with torch.save from a tiny
timm `VisionTransformer` with random weights (LayerNorms and biases moved off their 1/0 init, so a dropped
or swapped one shows). The reference is timm itself given the file as the official fine-tuning code gives
it (`load_state_dict(strict=False)`, positions resampled with timm's `resample_abs_pos_embed`): our pooled
features and logits must match its within 1e-4 relative (plus 1e-5 of the largest magnitude) in float32.
"""

import argparse
import functools

import jax
import numpy as np
import pytest

from abaw_jax.models import encoders
from abaw_jax.models import torch_weights as tw
from abaw_jax.models.vit import VIT_SIZES, ViT, ViTConfig, sincos_pos_embed_2d
from abaw_jax.torch_compat import import_timm

import_timm()  # torchvision, which timm imports, needs its op schemas first
import torch  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

RTOL = 1e-4
ATOL_FRACTION = 1e-5
# ViT-Ti's width (3 heads, which load_encoder reads from the width) at 32 pixels, patch 8: a 4x4 grid.
WIDTH, DEPTH, PATCH, IMAGE = 192, 2, 8, 32
CLASSES = 8
FRESH = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def timm_vit(
    seed: int,
    *,
    width: int = WIDTH,
    heads: int = 3,
    depth: int = DEPTH,
    image: int = IMAGE,
    pool: str = "avg",
    num_classes: int = 0,
    **kwargs,
):
    """A timm ViT with random weights: global pool + fc_norm for pool='avg', cls token + final norm for 'token'."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=image,
        patch_size=PATCH,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        global_pool=pool,
        num_classes=num_classes,
        **kwargs,
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn_like(module.weight))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0.0, module.weight[0].numel() ** -0.5)
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear, torch.nn.Conv2d)):
                module.bias.normal_(0.0, 0.05)
        model.cls_token.normal_(0.0, 0.5)
        model.pos_embed.normal_(0.0, 0.5)
    return model


def timm_gap(state: dict, *, image: int = IMAGE, num_classes: int = 0) -> tuple[VisionTransformer, list[str]]:
    """timm's global-pool ViT loaded with `state` as MAE-Face's example and the official fine-tuning do."""
    model = VisionTransformer(
        img_size=image,
        patch_size=PATCH,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=3,
        global_pool="avg",
        num_classes=num_classes,
    ).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not [k for k in unexpected if not k.startswith(("decoder", "mask_token", "norm.", "AU_head", "ID_head"))]
    return model, sorted(missing)


def images(size: int = IMAGE, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(size).normal(size=(batch, size, size, 3)).astype(np.float32)


def timm_outputs(model: VisionTransformer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pooled fc_norm features, logits) of timm's model on NHWC images."""
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        return model.forward_head(tokens, pre_logits=True).numpy(), model.forward_head(tokens).numpy()


@functools.lru_cache
def _forward(config: ViTConfig):
    """(pooled features, logits) of our model, compiled once per config the tests use."""
    model = ViT(config)
    return jax.jit(
        lambda params, x: (model.apply({"params": params}, x, method=ViT.features), model.apply({"params": params}, x))
    )


def our_outputs(loaded: encoders.LoadedEncoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features, logits = _forward(loaded.config)(loaded.params, x)
    return np.asarray(features), np.asarray(logits)


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL_FRACTION * np.abs(theirs).max(), err_msg=what)


def decoder_keys(seed: int, width: int = 64) -> dict[str, torch.Tensor]:
    """Tensors named as the official MAE's decoder (a few of them: the loader must leave them all out)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "mask_token": (1, 1, width),
        "decoder_embed.weight": (width, WIDTH),
        "decoder_embed.bias": (width,),
        "decoder_pos_embed": (1, 1 + (IMAGE // PATCH) ** 2, width),
        "decoder_blocks.0.attn.qkv.weight": (3 * width, width),
        "decoder_norm.weight": (width,),
        "decoder_pred.weight": (PATCH * PATCH * 3, width),
        "decoder_pred.bias": (PATCH * PATCH * 3,),
    }
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def state_of(model: VisionTransformer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained():
    """The encoder of an official MAE pretraining checkpoint (cls token + final norm, no head), timm's keys."""
    state = state_of(timm_vit(0, pool="token"))
    assert sorted({k.split(".")[0] for k in state}) == ["blocks", "cls_token", "norm", "patch_embed", "pos_embed"]
    return state


def test_official_pretraining_checkpoint_in_every_wrapping(pretrained, tmp_path):
    """MAE-Face / FMAE / facebookresearch: `{'model': encoder + norm + decoder, 'epoch', 'args'}` as the MAE
    training loop saves it, and the same encoder bare, under 'state_dict', saved from DistributedDataParallel."""
    x = images()
    reference, missing = timm_gap(pretrained, num_classes=CLASSES)
    assert set(missing) == FRESH  # what the official fine-tuning initialises afresh
    expected = timm_outputs(reference, x)[0]
    files = {
        "mae_pretrain.pth": {
            "model": pretrained | decoder_keys(1),
            "epoch": 799,
            "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True),
        },
        "bare.pth": pretrained,
        "trainer.pth": {"state_dict": pretrained, "epoch": 3},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in pretrained.items()}},
    }
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        loaded = encoders.load_encoder(str(tmp_path / name), num_classes=CLASSES, seed=1)
        assert loaded.kind == "official" and loaded.config.image_size == IMAGE and loaded.config.num_heads == 3
        assert set(loaded.fresh_keys) == FRESH, name
        assert any("left out the final norm" in note for note in loaded.notes), loaded.notes
        assert any("MAE decoder (8 tensors)" in note for note in loaded.notes) == (name == "mae_pretrain.pth")
        assert_close(our_outputs(loaded, x)[0], expected, f"{name}: pooled features")


def test_finetuned_global_pool_checkpoint_keeps_its_head_only_when_it_fits(tmp_path):
    x = images()
    source = timm_vit(2, num_classes=CLASSES)
    torch.save({"model": state_of(source)}, tmp_path / "finetuned.pth")
    loaded = encoders.load_encoder(str(tmp_path / "finetuned.pth"), num_classes=CLASSES)
    assert loaded.fresh_keys == () and loaded.notes == ()
    for ours, theirs, what in zip(our_outputs(loaded, x), timm_outputs(source, x), ("features", "logits")):
        assert_close(ours, theirs, what)

    other_task = encoders.load_encoder(str(tmp_path / "finetuned.pth"), num_classes=3)
    assert set(other_task.fresh_keys) == {"head.weight", "head.bias"}
    assert other_task.notes == (
        "left out the file's classifier heads head (8 outputs): the task's 3-output head starts fresh",
    )
    jax.tree.map(np.testing.assert_array_equal, other_task.params["blocks_1"], loaded.params["blocks_1"])
    np.testing.assert_array_equal(other_task.params["fc_norm"]["scale"], loaded.params["fc_norm"]["scale"])


def test_fmae_iat_and_cls_token_heads_are_left_out(pretrained, tmp_path):
    """FMAE-IAT's fine-tuned model carries timm's own `head` beside its `AU_head` and `ID_head`; a
    cls-token model's head was trained on the final norm of the cls token, not on pooled patches."""
    x = images()
    source = timm_vit(3)
    generator = torch.Generator().manual_seed(3)
    heads = {
        "AU_head.weight": torch.randn(12, WIDTH, generator=generator),
        "AU_head.bias": torch.randn(12, generator=generator),
        "ID_head.weight": torch.randn(41, WIDTH, generator=generator),
        "ID_head.bias": torch.randn(41, generator=generator),
        "head.weight": torch.randn(1000, WIDTH, generator=generator),
        "head.bias": torch.randn(1000, generator=generator),
    }
    torch.save({"model": state_of(source) | heads}, tmp_path / "fmae_iat.pth")
    loaded = encoders.load_encoder(str(tmp_path / "fmae_iat.pth"), num_classes=CLASSES)
    assert set(loaded.fresh_keys) == {"head.weight", "head.bias"}
    assert loaded.notes == (
        "left out the file's classifier heads AU_head (12 outputs), ID_head (41 outputs), head (1000 outputs): "
        "the task's 8-output head starts fresh",
    )
    assert_close(our_outputs(loaded, x)[0], timm_outputs(source, x)[0], "FMAE-IAT features")

    cls_head = {"head.weight": torch.randn(CLASSES, WIDTH), "head.bias": torch.randn(CLASSES)}
    torch.save({"model": pretrained | cls_head}, tmp_path / "cls_token_finetuned.pth")
    loaded = encoders.load_encoder(str(tmp_path / "cls_token_finetuned.pth"), num_classes=CLASSES)
    assert set(loaded.fresh_keys) == FRESH


def test_position_table_without_cls_row(tmp_path):
    """timm's `no_embed_class`: positions for the patches only, the cls token gets none."""
    x = images()
    source = timm_vit(4, no_embed_class=True)
    assert tuple(source.pos_embed.shape) == (1, (IMAGE // PATCH) ** 2, WIDTH)
    torch.save(state_of(source), tmp_path / "no_cls_position.pth")
    loaded = encoders.load_encoder(str(tmp_path / "no_cls_position.pth"), num_classes=CLASSES)
    assert any("no cls row" in note for note in loaded.notes)
    np.testing.assert_array_equal(loaded.params["pos_embed"][0, 0], np.zeros(WIDTH, np.float32))
    assert_close(our_outputs(loaded, x)[0], timm_outputs(source, x)[0], "features")


@pytest.mark.parametrize("old, new", [(4, 6), (4, 2), (14, 16), (14, 7)])
def test_position_resampling_is_timms(old, new):
    """Up and down (where the antialiasing matters), the ViT-B grid to 256 and 112 pixels."""
    table = np.random.default_rng(old * new).normal(size=(1, 1 + old * old, 16)).astype(np.float32)
    expected = resample_abs_pos_embed(torch.from_numpy(table), new_size=[new, new], num_prefix_tokens=1).numpy()
    np.testing.assert_allclose(tw.resample_pos_embed(table, new), expected, rtol=0, atol=1e-5)


def test_position_table_resampled_to_another_image_size(pretrained, tmp_path):
    torch.save({"model": pretrained}, tmp_path / "mae.pth")
    loaded = encoders.load_encoder(str(tmp_path / "mae.pth"), num_classes=CLASSES, image_size=48)
    assert loaded.config.image_size == 48 and loaded.params["pos_embed"].shape == (1, 1 + 6 * 6, WIDTH)
    assert "resampled the learned position table bicubically from 4x4 to 6x6 patches (32 -> 48 pixels)" in " ".join(
        loaded.notes
    )
    x = images(48)
    resampled = resample_abs_pos_embed(pretrained["pos_embed"], new_size=[6, 6], num_prefix_tokens=1)
    reference, _ = timm_gap(pretrained | {"pos_embed": resampled}, image=48)
    assert_close(our_outputs(loaded, x)[0], timm_outputs(reference, x)[0], "features at 48 pixels")


def test_fixed_sincos_table_stored_or_left_out(pretrained, tmp_path):
    """The MAE's fixed 2-D sin-cos table loads as stored; a file without any table gets that table."""
    x = images()
    table = torch.from_numpy(sincos_pos_embed_2d(WIDTH, IMAGE // PATCH)[None])
    reference, _ = timm_gap(pretrained | {"pos_embed": table})
    expected = timm_outputs(reference, x)[0]
    torch.save({"model": pretrained | {"pos_embed": table}}, tmp_path / "sincos.pth")
    torch.save({"model": {k: v for k, v in pretrained.items() if k != "pos_embed"}}, tmp_path / "no_table.pth")
    stored = encoders.load_encoder(str(tmp_path / "sincos.pth"), num_classes=CLASSES)
    absent = encoders.load_encoder(str(tmp_path / "no_table.pth"), num_classes=CLASSES, image_size=IMAGE)
    assert "using the MAE's fixed 2-D sin-cos table for 4x4 patches" in " ".join(absent.notes)
    for loaded, what in ((stored, "stored table"), (absent, "recomputed table")):
        assert_close(our_outputs(loaded, x)[0], expected, what)
    resampled = encoders.load_encoder(str(tmp_path / "sincos.pth"), num_classes=CLASSES, image_size=48)
    assert "resampled the fixed 2-D sin-cos position table" in " ".join(resampled.notes)


def test_vit_small_width_reads_six_heads(tmp_path):
    """FMAE's and MAE-Face's ViT-S (width 384, 6 heads): a wrong head count would change every attention."""
    x = images()
    source = timm_vit(5, width=384, heads=6)
    torch.save({"model": state_of(source)}, tmp_path / "vit_small.pth")
    loaded = encoders.load_encoder(str(tmp_path / "vit_small.pth"))
    assert (loaded.config.width, loaded.config.num_heads, loaded.config.mlp_dim) == (384, 6, 1536)
    assert_close(our_outputs(loaded, x)[0], timm_outputs(source, x)[0], "ViT-S features")


def test_full_depth_vit_small_is_the_small_size_fine_tuning_asks_for(tmp_path):
    """A 12-block ViT-S file reads as `VIT_SIZES['small']`, the size `--config.model.size=small` checks it against."""
    torch.save({"model": state_of(timm_vit(6, width=384, heads=6, depth=12))}, tmp_path / "vit_small.pth")
    loaded = encoders.load_encoder(str(tmp_path / "vit_small.pth"))
    found = {k: getattr(loaded.config, k) for k in VIT_SIZES["small"]}
    assert found == VIT_SIZES["small"]


def _write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return str(path)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("photo.pth", lambda s: b"\xff\xd8\xff\xe0 a JPEG, not weights", r"not a readable PyTorch checkpoint"),
        ("module.pth", lambda s: torch.nn.Linear(2, 2), r"holds a pickled torch\.nn\.modules\.linear\.Linear besides"),
        (
            "resnet.pth",
            lambda s: {"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(2, 4)},
            r"not a ViT encoder in the MAE / timm layout \(no 'patch_embed\.proj\.weight'.*found conv1\.weight, "
            r"fc\.weight\)",
        ),
        (
            "cut.pth",
            lambda s: {k: v for k, v in s.items() if k not in ("cls_token", "blocks.1.attn.proj.bias")},
            r"not a complete ViT encoder; missing blocks\.1\.attn\.proj\.bias, cls_token$",
        ),
        (
            "shape.pth",
            lambda s: s | {"blocks.1.mlp.fc2.weight": torch.zeros(WIDTH, 700)},
            r"wrong shapes: blocks\.1\.mlp\.fc2\.weight: expected \(192, 768\), found \(192, 700\)",
        ),
        (
            "positions.pth",
            lambda s: s | {"pos_embed": torch.zeros(1, 18, WIDTH)},
            r"pos_embed has 18 positions; expected a square grid of patches",
        ),
        (
            "layer_scale.pth",
            lambda s: s | {"blocks.0.ls1.gamma": torch.ones(WIDTH)},
            r"keys not in the MAE / timm ViT layout: blocks\.0\.ls1\.gamma$",
        ),
        (
            "odd_width.pth",
            lambda s: {
                "patch_embed.proj.weight": torch.zeros(100, 3, 8, 8),
                "blocks.0.mlp.fc1.weight": torch.zeros(4, 100),
            },
            r"width 100 is not a standard ViT size",
        ),
    ],
)
def test_bad_files_are_one_line_naming_the_file(pretrained, tmp_path, name, make, message):
    path = _write(tmp_path, name, make(dict(pretrained)))
    with pytest.raises((encoders.EncoderLoadError, tw.WeightFileError)) as caught:
        encoders.load_encoder(path, num_classes=CLASSES)
    text = str(caught.value)
    assert text.startswith(path + ": ") and "\n" not in text, text
    assert caught.match(message)


def test_image_size_that_the_patch_does_not_divide(pretrained, tmp_path):
    path = _write(tmp_path, "mae.pth", {"model": pretrained})
    with pytest.raises(encoders.EncoderLoadError, match=r"mae\.pth: image size 36 is not a positive multiple of"):
        encoders.load_encoder(path, image_size=36)
