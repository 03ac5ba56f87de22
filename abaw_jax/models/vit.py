"""Vision Transformer encoder with the official MAE layout and numerics.

Parameter names mirror the official PyTorch MAE / timm keys (`patch_embed`, `blocks_{i}/attn/qkv`,
`norm`, `fc_norm`, `head`), so weight conversion is a rename plus a transpose (see `torch_weights.py`).
Numerics follow the official code: pre-norm blocks, LayerNorm eps 1e-6, one fused qkv projection with bias,
exact (erf) GELU, fixed 2-D sin-cos position embeddings with a zero row for the cls token.

Two pooling heads, as in the official code:
- `pool='token'` (MAE pretraining): final `norm` over every token.
- `pool='gap'` (fine-tuning and frozen features): mean over patch tokens, then `fc_norm`; this 768-d vector
  is the per-frame visual feature used downstream. An optional linear `head` maps it to task logits.

Attention runs through XLA by default, or through cuDNN's fused flash attention (`attention='cudnn'`,
NVIDIA GPUs) with the tokens padded to the kernels' tile and masked; both compute the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_NORM_EPS = 1e-6

# Official MAE init: xavier_uniform on Linear weights and on the patch projection viewed as a
# (width, patch*patch*channels) matrix, which for a conv kernel means fan_in over (h, w, in_ch).
_dense_init = nn.initializers.xavier_uniform()
_patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)
_token_init = nn.initializers.normal(stddev=0.02)
_head_init = nn.initializers.truncated_normal(stddev=2e-5)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Shape and behaviour of a ViT encoder."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: Literal["token", "gap"] = "token"
    num_classes: int = 0
    drop_path_rate: float = 0.0
    # MAE freezes its sin-cos table; fine-tuning (official `models_vit`) trains it.
    pos_embed_trainable: bool = False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 * self.channels

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.pool not in ("token", "gap"):
            raise ValueError(f"pool must be 'token' or 'gap', got {self.pool!r}")


VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=192, depth=4, num_heads=3, mlp_dim=768),
    # ViT-S/16, the size of public face MAEs such as FMAE's and MAE-Face's small encoders.
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


def sincos_pos_embed_2d(width: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """The official MAE position table: (1 + grid**2, width) with a zero cls row.

    The first half of each row encodes the patch's column, the second half its row (the official code's
    meshgrid order), each half as [sin | cos] over geometric frequencies 1/10000**(i / (width/4)).
    """
    if width % 4:
        raise ValueError(f"sin-cos position embeddings need width divisible by 4, got {width}")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
    rows, cols = np.meshgrid(
        np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64), indexing="ij"
    )

    def embed_1d(positions: np.ndarray) -> np.ndarray:
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, width)), table], axis=0)
    return table.astype(np.float32)


def fixed_sincos_init(width: int, grid_size: int):
    def init(key, shape, dtype=jnp.float32):
        del key
        table = sincos_pos_embed_2d(width, grid_size)[None]
        if table.shape != tuple(shape):
            raise ValueError(f"position table shape {table.shape} does not match {shape}")
        return jnp.asarray(table, dtype)

    return init


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "xla") -> jax.Array:
    """Softmax attention over (batch, tokens, heads, head_dim) inputs.

    'xla' materialises the attention matrix. 'cudnn' runs cuDNN's fused flash attention, which needs
    token counts its kernels tile (ViT's 197 and MAE's 50 are not), so the tokens are zero-padded to a
    multiple of 64 and the padding is masked out through the sequence lengths; the padded rows are
    dropped again, so the result equals the unpadded attention.
    """
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v)
    if implementation != "cudnn":
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
    return padded_attention(q, k, v, multiple=64, implementation="cudnn")


def padded_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, multiple: int, implementation: str | None
) -> jax.Array:
    batch, tokens = q.shape[:2]
    padding = ((0, 0), (0, -tokens % multiple), (0, 0), (0, 0))
    lengths = jnp.full((batch,), tokens, jnp.int32)
    out = jax.nn.dot_product_attention(
        jnp.pad(q, padding),
        jnp.pad(k, padding),
        jnp.pad(v, padding),
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :tokens]


class Attention(nn.Module):
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    implementation: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=_dense_init, name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
        out = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], self.implementation)
        return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="proj")(
            out.reshape(batch, length, width)
        )


class Mlp(nn.Module):
    hidden_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_dense_init, name="fc1")(x)
        x = jax.nn.gelu(x, approximate=False)
        return nn.Dense(width, dtype=self.dtype, kernel_init=_dense_init, name="fc2")(x)


class Block(nn.Module):
    """Pre-norm transformer block; drop path drops a sample's whole residual branch."""

    num_heads: int
    mlp_dim: int
    drop_path_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2), deterministic=deterministic)
        y = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm1")(x)
        x = x + drop_path(Attention(self.num_heads, self.dtype, self.attention, name="attn")(y))
        y = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm2")(x)
        return x + drop_path(Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y))


def make_blocks(
    count: int,
    num_heads: int,
    mlp_dim: int,
    prefix: str,
    dtype: jnp.dtype,
    remat: bool,
    attention_impl: str,
    drop_path_rates: list[float] | None = None,
) -> list[Block]:
    """Blocks named `{prefix}_{i}`; `remat` recomputes each block's activations in the backward pass."""
    block_cls = nn.remat(Block, static_argnums=(2,)) if remat else Block
    rates = drop_path_rates or [0.0] * count
    return [block_cls(num_heads, mlp_dim, rates[i], dtype, attention_impl, name=f"{prefix}_{i}") for i in range(count)]


class ViT(nn.Module):
    """ViT encoder. Images are NHWC floats, already normalised."""

    config: ViTConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention: str = "xla"

    def setup(self):
        cfg = self.config
        self.patch_embed = nn.Conv(
            cfg.width,
            (cfg.patch_size, cfg.patch_size),
            strides=cfg.patch_size,
            padding="VALID",
            dtype=self.dtype,
            kernel_init=_patch_init,
        )
        self.cls_token = self.param("cls_token", _token_init, (1, 1, cfg.width))
        self.pos_embed = self.param(
            "pos_embed", fixed_sincos_init(cfg.width, cfg.grid_size), (1, cfg.num_patches + 1, cfg.width)
        )
        # Stochastic depth grows linearly with depth, as in the official fine-tuning recipe.
        rates = [float(r) for r in np.linspace(0.0, cfg.drop_path_rate, cfg.depth)]
        self.blocks = make_blocks(
            cfg.depth, cfg.num_heads, cfg.mlp_dim, "blocks", self.dtype, self.remat, self.attention, rates
        )
        if cfg.pool == "token":
            self.norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype)
        else:
            self.fc_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype)
        if cfg.num_classes:
            self.head = nn.Dense(cfg.num_classes, kernel_init=_head_init)

    def position_table(self) -> jax.Array:
        table = self.pos_embed
        return table if self.config.pos_embed_trainable else jax.lax.stop_gradient(table)

    def embed_patches(self, images: jax.Array) -> jax.Array:
        """Patch tokens plus their position embeddings, (batch, num_patches, width), no cls token."""
        cfg = self.config
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise ValueError(
                f"expected images of shape (batch, {cfg.image_size}, {cfg.image_size}, "
                f"{cfg.channels}), got {images.shape}"
            )
        tokens = self.patch_embed(images.astype(self.dtype))
        tokens = tokens.reshape(tokens.shape[0], -1, cfg.width)
        return tokens + self.position_table()[:, 1:].astype(self.dtype)

    def encode(self, patch_tokens: jax.Array, deterministic: bool = True) -> tuple[jax.Array, list[jax.Array]]:
        """Prepends the cls token, runs the blocks; returns the final-norm output and each block's input."""
        cls = (self.cls_token + self.position_table()[:, :1]).astype(self.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (patch_tokens.shape[0], 1, cls.shape[-1])), patch_tokens], 1)
        hidden = []
        for block in self.blocks:
            hidden.append(x)
            x = block(x, deterministic)
        hidden.append(x)
        return x, hidden

    def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
        """`pool='token'`: normed tokens (batch, 1 + patches, width). `pool='gap'`: pooled feature, or logits
        when the config has a head."""
        x, _ = self.encode(self.embed_patches(images), deterministic)
        if self.config.pool == "token":
            return self.norm(x)
        feature = self.pool_patches(x)
        return self.head(feature) if self.config.num_classes else feature

    def features(self, images: jax.Array) -> jax.Array:
        """The pooled, `fc_norm`-ed feature (batch, width) of a `pool='gap'` encoder, head not applied."""
        if self.config.pool != "gap":
            raise ValueError("features() needs an encoder built with pool='gap'")
        x, _ = self.encode(self.embed_patches(images))
        return self.pool_patches(x)

    def pool_patches(self, x: jax.Array) -> jax.Array:
        """Mean over the patch tokens (cls left out), then `fc_norm`, as the official fine-tuned model."""
        return self.fc_norm(x[:, 1:].mean(axis=1))
