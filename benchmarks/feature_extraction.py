r"""Frozen-feature extraction, frames/s end to end (JPEG files in, pooled features on the host out), against
timm's ViT in PyTorch on the same frames.

  python -m benchmarks.feature_extraction [--sizes=tiny,base --frames=0 --batch=0 --dtype=auto]

Writes --frames JPEG face crops of 112 x 112 px (quality 90, like Aff-Wild2's crops) to a temporary folder,
then for each model size times, in one run:
  decode  : reading and decoding the files alone on `--threads` host threads, at the stored size
            (`data.device_images.decode_stored`, what both paths do on the host: the ceiling either path can
            reach), and, for comparison, with the host resize to the model's input the job used before
            (`data.mae_pipeline.decode_resize`, OpenCV bicubic);
  ours    : the feature-extraction job's path: `extract_features.decoded_batches` (file reads and decodes at
            the stored size on the threads, a few batches ahead) feeding the job's jitted step
            (`jit_extract_step`: the batch sharded over all devices, bicubic resize and ImageNet normalisation
            on device (`device_images.prepare_images`), `ViT.features`), features fetched to the host each
            batch while the next one runs;
  timm    : `timm` VisionTransformer(global_pool='avg', fc_norm=True) with the same weights: the same reads
            and decodes on the same threads (the next batch decoding while the forward runs), the uint8
            batch resized on the PyTorch device by `torch.nn.functional.interpolate` (bicubic; antialiased
            when downscaling, the rule `device_images` follows), normalised, `forward_features` + average
            pooling + `fc_norm` under `torch.inference_mode()` (bf16 autocast when --dtype resolves to
            bfloat16).
Both paths include the same JPEG decode cost. Each path runs once over all frames after a one-batch
warm-up (compilation excluded); frames/s = frames / wall seconds. The table also gives the largest
difference between the two paths' features (same weights, same pixels up to rounding).

Sizes: `tiny` is the tiny preset's model (width 192, 4 blocks, 64 px, patch 8); `base` is ViT-B/16 at
224 px (17.6 GFLOP per frame). Defaults: on CPU 512 tiny / 64 base frames, batch 64 / 16, fp32; on an
accelerator 32768 frames, batch 1024, bf16 (the goal on one H100: ViT-B/16 above 10,000 frames/s).
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from abaw_jax.data import device_images, mae_pipeline
from abaw_jax.jobs import extract_features
from abaw_jax.models import params_io, torch_weights
from abaw_jax.models.vit import VIT_SIZES, ViT, ViTConfig
from abaw_jax.runtime import sharding
from abaw_jax.torch_compat import import_torchvision
from benchmarks import json_out
from benchmarks.data_pipeline import make_faces

_SIZES = flags.DEFINE_list("sizes", ["tiny", "base"], "Model sizes: tiny (64 px, patch 8) and/or base (224, 16).")
_FRAMES = flags.DEFINE_integer("frames", 0, "Frames per size; 0: 512 tiny / 64 base on CPU, 32768 elsewhere.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0: 64 tiny / 16 base on CPU, 1024 elsewhere.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "auto",
    ["auto", "float32", "bfloat16"],
    "Compute dtype of both paths; auto: bfloat16 on accelerators, float32 on CPU.",
)
_THREADS = flags.DEFINE_integer("threads", 0, "Decode threads (both paths); 0: one per CPU core.")

_GEOMETRY = {"tiny": dict(image_size=64, patch_size=8), "base": dict(image_size=224, patch_size=16)}


@dataclasses.dataclass
class Result:
    name: str
    frames: int
    seconds: float
    features: np.ndarray | None = None

    @property
    def rate(self) -> float:
        return self.frames / self.seconds


def vit_config(size: str) -> ViTConfig:
    return ViTConfig(**VIT_SIZES[size], **_GEOMETRY[size], pool="gap")


STORED_SIZE = 112  # Aff-Wild2's crops


def decode_stored(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    pixels, boxes = device_images.empty_batch(1, STORED_SIZE)
    return pixels[0], device_images.decode_stored(path.read_bytes(), pixels[0])


def time_decode(paths, pool) -> Result:
    start = time.perf_counter()
    list(pool.map(decode_stored, paths))
    return Result("decode only", len(paths), time.perf_counter() - start)


def time_decode_resize(paths, image_size, pool) -> Result:
    start = time.perf_counter()
    list(pool.map(lambda p: mae_pipeline.decode_resize(p.read_bytes(), image_size=image_size), paths))
    return Result("decode + host resize", len(paths), time.perf_counter() - start)


def time_ours(paths, config, params, batch, dtype, pool) -> Result:
    mesh = sharding.make_mesh()
    model = ViT(
        config,
        dtype=extract_features.COMPUTE_DTYPES[dtype],
        attention="cudnn" if jax.devices()[0].device_kind.startswith("NVIDIA") else "xla",
    )
    step = extract_features.jit_extract_step(model, None, mesh)
    params = jax.device_put(params, sharding.replicated(mesh))

    def run(count):
        out, in_flight = [], None
        for *local, _ in extract_features.decoded_batches(
            paths.__getitem__, count, global_batch=batch, buffer_size=STORED_SIZE, pool=pool, prefetch=4
        ):
            outputs = step(params, *(sharding.global_batch(value, mesh) for value in local))
            if in_flight is not None:
                out.append(jax.device_get(in_flight[0]))
            in_flight = outputs
        out.append(jax.device_get(in_flight[0]))
        return np.concatenate(out)[:count]

    run(batch)  # compile
    start = time.perf_counter()
    features = run(len(paths))
    return Result("abaw_jax (JAX)", len(paths), time.perf_counter() - start, features)


def time_timm(paths, config, params, batch, dtype, pool) -> Result:
    import_torchvision()
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.width,
        global_pool="avg",
        fc_norm=True,
        num_classes=0,
    )
    state = {k: torch.from_numpy(np.array(v)) for k, v in torch_weights.flax_to_official(params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"timm ViT does not take our weights: missing {missing}, unexpected {unexpected}")
    model = model.eval().to(device)
    mean = torch.tensor(mae_pipeline.IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(mae_pipeline.IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def decode(chunk):
        return [pool.submit(decode_stored, p) for p in chunk]

    # The crops fill their buffers here (all 112 px), so the whole buffer is the box.
    antialias = config.image_size < STORED_SIZE

    def run(paths):
        out = []
        chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
        pending = decode(chunks[0])
        for index in range(len(chunks)):
            pixels = np.stack([f.result()[0] for f in pending])
            if index + 1 < len(chunks):
                pending = decode(chunks[index + 1])
            x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float()
            size = (config.image_size, config.image_size)
            x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=antialias)
            x = (x.clamp(0, 255).round() - mean) / std
            with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16"):
                tokens = model.forward_features(x)
                feature = model.fc_norm(tokens[:, model.num_prefix_tokens :].mean(dim=1))
            out.append(feature.float().cpu().numpy())
        return np.concatenate(out)

    run(paths[:batch])  # warm-up
    start = time.perf_counter()
    features = run(paths)
    return Result("timm (PyTorch)", len(paths), time.perf_counter() - start, features)


def main(argv):
    del argv
    accelerator = jax.devices()[0].platform != "cpu"
    dtype = _DTYPE.value if _DTYPE.value != "auto" else ("bfloat16" if accelerator else "float32")
    threads = _THREADS.value or os.cpu_count()
    print(
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, {threads} decode "
        f"threads, {dtype} compute, 112 px JPEG crops"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for size in _SIZES.value:
            config = vit_config(size)
            frames = _FRAMES.value or (32768 if accelerator else {"tiny": 512, "base": 64}[size])
            batch = _BATCH.value or (1024 if accelerator else {"tiny": 64, "base": 16}[size])
            faces = make_faces(112, min(frames, 512))
            paths = []
            for i in range(frames):
                path = pathlib.Path(tmp, f"{size}_{i:06d}.jpg")
                path.write_bytes(faces[i % len(faces)])
                paths.append(path)
            params = params_io.init_params(config, seed=0)
            decode = time_decode(paths, pool)
            decode_resize = time_decode_resize(paths, config.image_size, pool)
            ours = time_ours(paths, config, params, batch, dtype, pool)
            timm_result = time_timm(paths, config, params, batch, dtype, pool)
            diff = float(np.abs(ours.features - timm_result.features).max())
            rows.append((size, config, frames, batch, decode, decode_resize, ours, timm_result, diff))
            for path in paths:
                path.unlink()

    print(
        "\n| model | frames | batch | decode only, 112 px (frames/s) | decode + host resize (frames/s) "
        "| abaw_jax (frames/s) | timm (frames/s) | abaw_jax / timm | max abs feature diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size, config, frames, batch, decode, decode_resize, ours, timm_result, diff in rows:
        print(
            f"| ViT-{size} {config.image_size}px/{config.patch_size} | {frames} | {batch} | {decode.rate:,.0f} "
            f"| {decode_resize.rate:,.0f} "
            f"| {ours.rate:,.1f} | {timm_result.rate:,.1f} | {ours.rate / timm_result.rate:.2f}x | {diff:.1e} |"
        )
    json_out.write(
        {
            "device": jax.devices()[0].device_kind,
            "dtype": dtype,
            "threads": threads,
            "results": [
                {
                    "size": size,
                    "frames": frames,
                    "batch": batch,
                    "decode_frames_per_s": decode.rate,
                    "decode_resize_frames_per_s": decode_resize.rate,
                    "ours_frames_per_s": ours.rate,
                    "timm_frames_per_s": timm_result.rate,
                    "max_abs_feature_diff": diff,
                }
                for size, _, frames, batch, decode, decode_resize, ours, timm_result, diff in rows
            ],
        }
    )


if __name__ == "__main__":
    app.run(main)
