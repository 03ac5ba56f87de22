r"""MAE ViT-B/16 face pretraining: the ABAW6 winners' recipe (He et al. MAE, batch 4096, 800 epochs).

Paper recipe (default), on a pod or a multi-GPU host, with face shards from data_prep.build_face_shards:

  python -m abaw_jax.main --config=configs/mae.py --workdir=/ckpt/mae_faces \
      --config.data.data_dir=/data/tfds

  ViT-B/16, mask 0.75, per-patch normalised pixel loss, batch 4096, lr 1.5e-4 * 4096/256 = 2.4e-3,
  AdamW (0.9, 0.95), weight decay 0.05 (not on biases, norms, tokens, position tables), 40 warmup
  epochs then per-step cosine to 0, 800 epochs, bf16 compute with fp32 weights. About 58.7 GFLOP per
  image and step: 4.5M faces x 800 epochs is ~2.1e20 FLOP, i.e. ~3.5 days on 8 H100 at 40% MFU.
  Expect the normalised-pixel loss to fall from ~1.0 to ~0.4.
  Batch 4096 that does not fit in memory: add --config.micro_batches=4 (same math, 4 accumulated
  micro-batches). Parameters and optimizer state sharded over 8 devices: --config.mesh.fsdp=8.

CPU preset, the README's main job (a few minutes on 2 cores, on the embedded synthetic faces):

  python -m abaw_jax.main --config=configs/mae.py:tiny --workdir=/tmp/abaw_mae_tiny

  Tiny ViT (width 192, 4 blocks) on 64x64 faces with 8x8 patches, batch 32, 300 steps, fp32: about
  1-2 minutes on 2 cores after a ~30 s first-time data build. The loss falls from ~1.3 at step 1 to
  ~0.7 (it plateaus there: per-patch-normalised 8x8 patches of smooth synthetic faces are mostly JPEG
  noise); reconstructions are written to <workdir>/reconstructions/.

Every value is checked before the run starts (`abaw_jax.jobs.mae_pretrain.validate_config`): a bad one
stops with `error: config.<key> must be ..., got ...` and exit status 2.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.job = "mae_pretrain"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.size = "base"
    config.model.image_size = 224
    config.model.patch_size = 16
    config.model.mask_ratio = 0.75
    config.model.norm_pix_loss = True
    config.model.dtype = "bfloat16"
    config.model.remat = False
    # 'auto': cuDNN flash attention on NVIDIA GPUs (1.4x the step speed on an H100), XLA elsewhere.
    config.model.attention = "auto"

    config.data = ml_collections.ConfigDict()
    # Empty: build face shards once from the embedded synthetic Aff-Wild2 release (in cache_dir).
    config.data.data_dir = ""
    config.data.cache_dir = ""
    config.data.split = "train"
    config.data.worker_count = 8
    config.data.worker_buffer_size = 2
    config.data.synthetic_videos = 16
    config.data.synthetic_frames_per_video = 300

    config.batch_size = 4096
    config.micro_batches = 1
    config.num_epochs = 800
    config.warmup_epochs = 40
    # When > 0, these replace the epoch-based counts (handy for smoke tests and benchmarks).
    config.total_steps = 0
    config.warmup_steps = 0
    config.base_lr = 1.5e-4
    config.b1 = 0.9
    config.b2 = 0.95
    config.weight_decay = 0.05
    config.grad_clip = 0.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = 1

    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.image_every = 5000
    config.image_count = 8

    if preset == "tiny":
        config.model.size = "tiny"
        config.model.image_size = 64
        config.model.patch_size = 8
        config.model.dtype = "float32"
        config.data.worker_count = 2
        config.batch_size = 32
        config.total_steps = 300
        config.warmup_steps = 30
        config.base_lr = 8e-3  # peak lr 1e-3 at batch 32
        config.log_every = 25
        config.checkpoint_every = 100
        config.image_every = 100
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/mae.py; use '' or 'tiny'")
    return config
