"""Masked autoencoder (He et al. 2022) with the official PyTorch MAE's masking, decoder and loss.

Per sample, uniform noise over the patches is argsorted; the first `int(N * (1 - mask_ratio))` patches
of that order are kept, the argsort of the order restores it. Mask 1 means removed. The decoder
re-inserts a shared mask token at the removed positions, adds its own fixed sin-cos table, and predicts
every patch's pixels in (row in patch, column in patch, channel) order. The loss is the mean squared error
per patch, averaged over removed patches only, with each target patch optionally normalised by its own
mean and unbiased variance (`norm_pix_loss`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from abaw_jax.models.vit import (
    LAYER_NORM_EPS,
    VIT_SIZES,
    ViT,
    ViTConfig,
    _dense_init,
    _token_init,
    fixed_sincos_init,
    make_blocks,
)


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    encoder: ViTConfig = ViTConfig()
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    @property
    def num_keep(self) -> int:
        return int(self.encoder.num_patches * (1 - self.mask_ratio))


MAE_DECODERS: dict[str, dict[str, int]] = {
    "tiny": dict(decoder_width=128, decoder_depth=2, decoder_heads=4, decoder_mlp_dim=512),
    "base": dict(decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048),
    "large": dict(decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048),
}


def mae_config(
    size: str = "base",
    *,
    image_size: int = 224,
    patch_size: int = 16,
    mask_ratio: float = 0.75,
    norm_pix_loss: bool = True,
) -> MAEConfig:
    """Named MAE sizes: 'tiny' (CPU tests), 'base' (ViT-B/16, the default), 'large' (ViT-L/16)."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(VIT_SIZES)}")
    encoder = ViTConfig(image_size=image_size, patch_size=patch_size, **VIT_SIZES[size])
    return MAEConfig(encoder=encoder, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, **MAE_DECODERS[size])


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """(batch, H, W, C) -> (batch, patches, patch*patch*C), patches row-major, pixels (row, col, channel)."""
    batch, height, width, channels = images.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = images.reshape(batch, grid_h, patch_size, grid_w, patch_size, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * grid_w, patch_size**2 * channels)


def unpatchify(patches: jax.Array, patch_size: int, channels: int = 3) -> jax.Array:
    batch, num_patches, _ = patches.shape
    grid = int(round(num_patches**0.5))
    x = patches.reshape(batch, grid, grid, patch_size, patch_size, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid * patch_size, grid * patch_size, channels)


def random_masking(noise: jax.Array, num_keep: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (ids_shuffle (B, N): patches by ascending noise, the first `num_keep` are kept;
    mask (B, N) with 1 = removed; ids_restore (B, N), the inverse permutation of ids_shuffle)."""
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    mask = (ids_restore >= num_keep).astype(jnp.float32)
    return ids_shuffle, mask, ids_restore


@jax.custom_vjp
def permute_tokens(x: jax.Array, order: jax.Array, inverse: jax.Array) -> jax.Array:
    """y[b, i] = x[b, order[b, i]] for i < order.shape[1], where `order` is (the first columns of) a
    per-sample permutation of x's tokens and `inverse` is that whole permutation's inverse.

    Plain `take_along_axis` would differentiate into a scatter-add, which on GPUs serialises on atomics;
    knowing the inverse permutation, the gradient is a gather too.
    """
    return jnp.take_along_axis(x, order[..., None], axis=1)


def _permute_tokens_fwd(x, order, inverse):
    return permute_tokens(x, order, inverse), (order, inverse)


def _permute_tokens_bwd(residuals, grad):
    order, inverse = residuals
    missing = inverse.shape[1] - order.shape[1]
    full = jnp.pad(grad, ((0, 0), (0, missing), (0, 0))) if missing else grad
    return jnp.take_along_axis(full, inverse[..., None], axis=1), None, None


permute_tokens.defvjp(_permute_tokens_fwd, _permute_tokens_bwd)


def reconstruction_loss(
    pred: jax.Array, images: jax.Array, mask: jax.Array, patch_size: int, norm_pix_loss: bool
) -> jax.Array:
    target = patchify(images.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


@dataclasses.dataclass(frozen=True)
class MAEOutput:
    loss: jax.Array
    pred: jax.Array  # (batch, patches, patch_dim), in the loss's target space
    mask: jax.Array  # (batch, patches), 1 = removed
    hidden_states: tuple[jax.Array, ...]  # encoder block inputs and the last block's output


jax.tree_util.register_dataclass(MAEOutput, data_fields=["loss", "pred", "mask", "hidden_states"], meta_fields=[])


class MAE(nn.Module):
    """MAE with a `ViT(pool='token')` encoder under `encoder/` and the decoder at the top level."""

    config: MAEConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention: str = "xla"

    def setup(self):
        cfg = self.config
        if cfg.encoder.pool != "token":
            raise ValueError("the MAE encoder uses pool='token'")
        self.encoder = ViT(cfg.encoder, dtype=self.dtype, remat=self.remat, attention=self.attention)
        self.decoder_embed = nn.Dense(cfg.decoder_width, dtype=self.dtype, kernel_init=_dense_init)
        self.mask_token = self.param("mask_token", _token_init, (1, 1, cfg.decoder_width))
        self.decoder_pos_embed = self.param(
            "decoder_pos_embed",
            fixed_sincos_init(cfg.decoder_width, cfg.encoder.grid_size),
            (1, cfg.encoder.num_patches + 1, cfg.decoder_width),
        )
        self.decoder_blocks = make_blocks(
            cfg.decoder_depth,
            cfg.decoder_heads,
            cfg.decoder_mlp_dim,
            "decoder_blocks",
            self.dtype,
            self.remat,
            self.attention,
        )
        self.decoder_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype)
        self.decoder_pred = nn.Dense(cfg.encoder.patch_dim, dtype=self.dtype, kernel_init=_dense_init)

    def decode(self, latent: jax.Array, ids_shuffle: jax.Array, ids_restore: jax.Array) -> jax.Array:
        x = self.decoder_embed(latent)
        batch, num_patches = ids_restore.shape
        mask_tokens = jnp.broadcast_to(
            self.mask_token.astype(x.dtype), (batch, num_patches + 1 - x.shape[1], x.shape[-1])
        )
        patches = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
        patches = permute_tokens(patches, ids_restore, ids_shuffle)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = x + jax.lax.stop_gradient(self.decoder_pos_embed).astype(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def __call__(self, images: jax.Array, noise: jax.Array) -> MAEOutput:
        """images: (batch, H, W, C) normalised; noise: (batch, patches) uniform, decides the masking."""
        cfg = self.config
        tokens = self.encoder.embed_patches(images)
        ids_shuffle, mask, ids_restore = random_masking(noise, cfg.num_keep)
        tokens = permute_tokens(tokens, ids_shuffle[:, : cfg.num_keep], ids_restore)
        latent, hidden = self.encoder.encode(tokens)
        latent = self.encoder.norm(latent)
        pred = self.decode(latent, ids_shuffle, ids_restore)
        loss = reconstruction_loss(pred, images, mask, cfg.encoder.patch_size, cfg.norm_pix_loss)
        return MAEOutput(loss=loss, pred=pred, mask=mask, hidden_states=tuple(hidden))


def masking_noise(rng: jax.Array, batch: int, config: MAEConfig) -> jax.Array:
    return jax.random.uniform(rng, (batch, config.encoder.num_patches))
