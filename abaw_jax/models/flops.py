"""Analytic FLOP counts for MAE pretraining and the peak rates of the devices we measure MFU against.

Conventions (as big_vision and MaxText report throughput): a multiply-add is 2 FLOPs; only matmuls,
the patch-embedding convolution and the two attention products are counted (norms, softmax, GELU and the
loss are a few percent and are left out); a training step is 3x the forward pass (the backward pass
computes two matmuls per forward matmul). For ViT-B/16 at mask ratio 0.75 this gives about 19.6 GFLOP
forward and 58.7 GFLOP per training image.
"""

from __future__ import annotations

import jax

from abaw_jax.models.mae import MAEConfig
from abaw_jax.models.vit import ViTConfig

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s per device, keyed by a substring of
# `jax.Device.device_kind`. The longest matching key wins ("H100 PCIe" before "H100").
PEAK_FLOPS: dict[str, float] = {
    # NVIDIA H100 datasheet: SXM5 BF16 tensor core 1,979 TFLOPS with sparsity -> 989.4 dense.
    "H100": 989.4e12,
    # Same datasheet, PCIe card: 1,513 TFLOPS with sparsity -> 756.5 dense.
    "H100 PCIe": 756.5e12,
    # NVIDIA H200 datasheet (SXM): BF16 1,979 TFLOPS with sparsity, the H100 SXM's compute -> 989.4 dense.
    "H200": 989.4e12,
    # NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS dense.
    "A100": 312e12,
    # Google Cloud TPU system architecture pages: per-chip bf16 peaks.
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,  # v5p chips report device_kind "TPU v5"; v5e reports "TPU v5 lite".
    "TPU v6 lite": 918e12,
}


def _block_flops(tokens: int, width: int, mlp_dim: int) -> int:
    """One pre-norm transformer block on `tokens` tokens: qkv, q @ k^T, attn @ v, proj, fc1, fc2."""
    projections = 2 * tokens * width * (3 * width + width + 2 * mlp_dim)
    attention = 2 * 2 * tokens * tokens * width
    return projections + attention


def mae_flops_per_image(config: MAEConfig) -> dict[str, int]:
    """FLOPs per image of the MAE forward pass and of a training step, split by part.

    The patch embedding runs on every patch (masking happens after it), the encoder on the cls token plus
    the kept patches, the decoder embedding on the encoder's output, the decoder blocks and the prediction
    head on the cls token plus all patches (the cls prediction is computed and then dropped).
    """
    enc = config.encoder
    encoder_tokens = 1 + config.num_keep
    decoder_tokens = 1 + enc.num_patches
    parts = {
        "patch_embed": 2 * enc.num_patches * enc.patch_dim * enc.width,
        "encoder": enc.depth * _block_flops(encoder_tokens, enc.width, enc.mlp_dim),
        "decoder_embed": 2 * encoder_tokens * enc.width * config.decoder_width,
        "decoder": config.decoder_depth * _block_flops(decoder_tokens, config.decoder_width, config.decoder_mlp_dim),
        "decoder_pred": 2 * decoder_tokens * config.decoder_width * enc.patch_dim,
    }
    forward = sum(parts.values())
    return {**parts, "forward": forward, "train": 3 * forward}


def device_peak_flops(device: jax.Device) -> float | None:
    """The bf16 dense peak FLOP/s of `device` from `PEAK_FLOPS`, or None for devices not listed (CPUs)."""
    kind = device.device_kind
    matches = [key for key in PEAK_FLOPS if key in kind]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def vit_flops_per_image(config: ViTConfig) -> dict[str, int]:
    """FLOPs per image of a ViT forward pass (all patches, the cls token, the head if any) and of a training
    step (3x), with the conventions above."""
    forward = (
        2 * config.num_patches * config.patch_dim * config.width
        + config.depth * _block_flops(1 + config.num_patches, config.width, config.mlp_dim)
        + 2 * config.width * config.num_classes
    )
    return {"forward": forward, "train": 3 * forward}
