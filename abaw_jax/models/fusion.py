"""TMF, the paper's transformer-based multi-modal fusion model (section 3.2): ONE ensemble member.

Per frame, the concatenated feature sets (visual + audio, (B, L, D)) go through

  1x1 projection D -> 256, LeakyReLU(0.1), 1x1 projection 256 -> 128
  4 post-LN transformer encoder layers (d 128, 4 heads, feed-forward 128, ReLU, dropout 0.3, LayerNorm eps 1e-5),
    exactly `torch.nn.TransformerEncoderLayer(128, 4, 128, 0.3, batch_first=True)`:
      x = LN1(x + Drop(SelfAttention(x)))        attention probabilities dropped too
      x = LN2(x + Drop(W2 Drop(ReLU(W1 x))))
  a per-frame head Linear(128, 64) -> BatchNorm -> Linear(64, C)

and gives (B, L, C): AU and EXPR logits, or VA values bounded to [-1, 1] by tanh (a clip would give no
gradient to a unit stuck outside the range). Every size is a `TMFConfig` field. Ensembles are the job's
business (`jax.vmap` over stacked member parameters); this module is one member.

Frames without a face. The store's visual rows of such frames are zeros; the model adds a learned
"no face" embedding (256-d, after the first projection) where `face` is False. We chose that over
copying the nearest face's feature because a copied face is a confident, stale input: the model could
not tell a held expression from a missing face, whereas the embedding tells it "no face here" and lets
attention lean on neighbouring frames and on audio. It also needs no per-video lookup at inference. The
job masks these frames out of the loss.

Padding. `mask` (B, L) is False on clip positions past a video's end: they are excluded as attention
keys (torch's `src_key_padding_mask`) and from the BatchNorm statistics.

BatchNorm follows torch's `nn.BatchNorm1d`: batch statistics with the biased variance for normalising,
running statistics updated as `(1 - momentum) * running + momentum * batch` with momentum 0.1 and the
*unbiased* batch variance. Flax's `nn.BatchNorm` keeps the biased variance in its running average, so
this module computes the masked statistics itself (in float32, two-pass, like `use_fast_variance=False`).
Collections: `params` and `batch_stats` (`mean`, `var`).

`init_variables` draws parameters like torch: Linear/Conv1d weights and biases uniform in
+-1/sqrt(fan_in), attention in-projection Xavier-uniform with zero biases, output projection bias zero,
and every encoder layer a copy of the first (`nn.TransformerEncoder` deep-copies its layer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import serialization


@dataclasses.dataclass(frozen=True)
class TMFConfig:
    """Sizes of one TMF member; the defaults are the paper's."""

    input_dim: int
    num_outputs: int
    bounded: bool = False  # VA: tanh to [-1, 1]
    proj_dim: int = 256
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 128
    head_dim: int = 64
    dropout: float = 0.3
    negative_slope: float = 0.1
    layer_norm_eps: float = 1e-5
    batch_norm_momentum: float = 0.1  # torch convention: weight of the new batch
    batch_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("input_dim", "num_outputs", "proj_dim", "width", "depth", "num_heads", "mlp_dim", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"TMFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"TMFConfig.width={self.width} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TMFConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.batch_norm_momentum <= 1.0:
            raise ValueError(f"TMFConfig.batch_norm_momentum must be in [0, 1], got {self.batch_norm_momentum}")


def torch_uniform(fan_in: int):
    """torch's Linear/Conv1d default: uniform in +-1/sqrt(fan_in) (kaiming_uniform(a=sqrt 5) for weights)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _in_projection(width: int):
    """torch's Xavier-uniform on the stacked (3 width, width) q|k|v matrix: bound sqrt(6 / (4 width))."""
    bound = math.sqrt(6.0 / (4 * width))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in), name=name)


class MaskedBatchNorm(nn.Module):
    """torch `BatchNorm1d` over the frames where `mask` is True (see the module docstring)."""

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if train:
            weight = mask.astype(jnp.float32)[..., None]
            count = jnp.sum(weight)
            mean = jnp.sum(weight * x, axis=tuple(range(x.ndim - 1))) / jnp.maximum(count, 1.0)
            var = jnp.sum(weight * (x - mean) ** 2, axis=tuple(range(x.ndim - 1))) / jnp.maximum(count, 1.0)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class EncoderLayer(nn.Module):
    """`torch.nn.TransformerEncoderLayer` with norm_first=False, ReLU (four dropout sites)."""

    config: TMFConfig

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array, train: bool) -> jax.Array:
        c = self.config
        attention = nn.MultiHeadDotProductAttention(
            num_heads=c.num_heads,
            dropout_rate=c.dropout,
            broadcast_dropout=False,
            kernel_init=_in_projection(c.width),
            bias_init=nn.initializers.zeros,
            out_kernel_init=torch_uniform(c.width),
            out_bias_init=nn.initializers.zeros,
            name="attention",
        )
        y = attention(x, x, mask=attention_mask, deterministic=not train)
        x = nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name="norm1")(
            x + nn.Dropout(c.dropout)(y, deterministic=not train)
        )
        y = _dense(c.mlp_dim, c.width, "linear1")(x)
        y = nn.Dropout(c.dropout)(nn.relu(y), deterministic=not train)
        y = _dense(c.width, c.mlp_dim, "linear2")(y)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name="norm2")(
            x + nn.Dropout(c.dropout)(y, deterministic=not train)
        )


class TMF(nn.Module):
    """One fusion member: (B, L, D) features, (B, L) face and padding masks -> (B, L, C) outputs."""

    config: TMFConfig

    @nn.compact
    def __call__(self, x: jax.Array, face: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        """`x` (B, L, input_dim) float; `face`, `mask` (B, L) bool (`mask` False = padding); `train`
        turns dropout on and BatchNorm to batch statistics (pass mutable=['batch_stats'] and a 'dropout' rng)."""
        c = self.config
        if x.shape[-1] != c.input_dim:
            raise ValueError(f"TMF expects {c.input_dim} features per frame, got {x.shape[-1]}")
        h = _dense(c.proj_dim, c.input_dim, "proj1")(x.astype(jnp.float32))
        no_face = self.param("no_face", nn.initializers.normal(0.02), (c.proj_dim,))
        h = h + jnp.where(face[..., None], 0.0, no_face)
        h = nn.leaky_relu(h, c.negative_slope)
        h = _dense(c.width, c.proj_dim, "proj2")(h)
        attention_mask = nn.make_attention_mask(jnp.ones_like(mask), mask)  # keys only, like torch
        for i in range(c.depth):
            h = EncoderLayer(c, name=f"layer{i}")(h, attention_mask, train)
        h = _dense(c.head_dim, c.width, "head1")(h)
        h = MaskedBatchNorm(c.batch_norm_momentum, c.batch_norm_eps, name="head_norm")(h, mask, train)
        out = _dense(c.num_outputs, c.head_dim, "head2")(h)
        return jnp.tanh(out) if c.bounded else out


def init_variables(config: TMFConfig, rng: jax.Array) -> dict[str, Any]:
    """{'params', 'batch_stats'} of a fresh member, torch-style (every encoder layer a copy of the first)."""
    dummy = jnp.zeros((1, 2, config.input_dim), jnp.float32)
    ones = jnp.ones((1, 2), bool)
    variables = TMF(config).init({"params": rng}, dummy, ones, ones, train=False)
    params = dict(variables["params"])
    for i in range(1, config.depth):
        params[f"layer{i}"] = params["layer0"]
    return {"params": params, "batch_stats": variables["batch_stats"]}


# ------------------------------------------------------------------------------- ensembles of members


def output_activation(kind: str, outputs: jax.Array) -> jax.Array:
    """What predictions hold, by task kind: 'binary' sigmoid probabilities, 'multiclass' softmax, else values."""
    if kind == "binary":
        return jax.nn.sigmoid(outputs)
    if kind == "multiclass":
        return jax.nn.softmax(outputs, axis=-1)
    return outputs


def ensemble_predict(
    params: Any,
    batch_stats: Any,
    feature_mean: jax.Array,
    feature_std: jax.Array,
    features: jax.Array,
    face: jax.Array,
    rows: jax.Array,
    mask: jax.Array,
    *,
    model: TMF,
    kind: str,
) -> jax.Array:
    """(M, W, L, C) activated outputs of every member (stacked params, means and stds (M, D)) on the windows
    rows/mask (W, L) of per-frame `features` (R, D) and `face` (R,): the one way windowed inference is done
    (the fusion job's evaluation and the predictor both jit this)."""
    x, present = features[rows], face[rows]

    def one(p, bs, mean, std):
        out = model.apply({"params": p, "batch_stats": bs}, (x - mean) / std, present, mask, train=False)
        return output_activation(kind, out)

    return jax.vmap(one)(params, batch_stats, feature_mean, feature_std)


EXPORT_FORMAT = 1
EXPORT_DIR = "export"  # where the fusion job saves its final members, in its workdir
EXPORT_JSON = "export.json"
EXPORT_ARRAYS = "ensemble.msgpack"


@dataclasses.dataclass
class EnsembleExport:
    """What it takes to run trained members on new per-frame features (the fusion job's `<workdir>/export/`).

    Attributes:
      task: AU, EXPR or VA.
      config: the members' TMFConfig (input_dim = sum of feature_sets' dims).
      members: member names, in the order of the stacked leading axis.
      feature_sets: {set name: dim} in the order the features are concatenated (visual sets, then audio).
      clip_len, eval_stride: the evaluation windows (`clips.evaluation_windows`).
      params, batch_stats: stacked member variables (leading axis M).
      feature_mean, feature_std: (M, D) per-member standardisation.
    """

    task: str
    config: TMFConfig
    members: tuple[str, ...]
    feature_sets: dict[str, int]
    clip_len: int
    eval_stride: int
    params: Any
    batch_stats: Any
    feature_mean: Any
    feature_std: Any


def save_ensemble(directory: str, export: EnsembleExport) -> None:
    """Writes `export.json` (everything but the arrays) and `ensemble.msgpack` (flax serialization) atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "params": export.params,
        "batch_stats": export.batch_stats,
        "feature_mean": export.feature_mean,
        "feature_std": export.feature_std,
    }
    description = {
        "format_version": EXPORT_FORMAT,
        "task": export.task,
        "model": dataclasses.asdict(export.config),
        "members": list(export.members),
        "feature_sets": [[n, d] for n, d in export.feature_sets.items()],
        "clip_len": export.clip_len,
        "eval_stride": export.eval_stride,
    }
    for name, data, mode in (
        (EXPORT_ARRAYS, serialization.msgpack_serialize(jax.device_get(arrays)), "wb"),
        (EXPORT_JSON, json.dumps(description, indent=1) + "\n", "w"),
    ):
        path = os.path.join(directory, name)
        with open(path + ".tmp", mode) as f:
            f.write(data)
        os.replace(path + ".tmp", path)


def load_ensemble(directory: str) -> EnsembleExport:
    """Reads what `save_ensemble` wrote; raises ValueError naming the file on anything else."""
    path = os.path.join(directory, EXPORT_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f)
        with open(os.path.join(directory, EXPORT_ARRAYS), "rb") as f:
            arrays = serialization.msgpack_restore(f.read())
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: not a fusion ensemble export ({e})") from e
    if description.get("format_version") != EXPORT_FORMAT:
        raise ValueError(f"{path}: format_version {description.get('format_version')!r}, expected {EXPORT_FORMAT}")
    return EnsembleExport(
        task=description["task"],
        config=TMFConfig(**description["model"]),
        members=tuple(description["members"]),
        feature_sets={n: int(d) for n, d in description["feature_sets"]},
        clip_len=int(description["clip_len"]),
        eval_stride=int(description["eval_stride"]),
        **arrays,
    )
