r"""Frozen per-frame features (stage 3): visual sets from frozen encoders, and audio sets, for the fusion stage.

Paper settings (default): ViT-B/16 features (768-d, 224 px) of the three per-task fine-tuned encoders
(the paper's aff2_AU, aff2_EXPR, aff2_VA) over every crop of the release, plus log-mel + MFCC audio:

  python -m abaw_jax.main --config=configs/extract_features.py --workdir=/data/features \
      --config.data.root=/data/affwild2 \
      --config.encoders.au=/ckpt/finetune_au --config.encoders.expr=/ckpt/finetune_expr \
      --config.encoders.va=/ckpt/finetune_va

  bf16 compute on accelerators (fp32 on CPU), float16 storage (lossless for bf16 outputs), batch 1024
  sharded over all devices. About 17.6 GFLOP per frame: 3 M Aff-Wild2 crops are ~5.3e16 FLOP per set, a
  few minutes per set on one H100 when the host decodes JPEGs fast enough (16+ cores). Writes ~4.6 GB per
  set. Add sets from other encoders (the paper's Table 6) with --config.encoders.affectnet_expr=... and
  --config.sets=au,expr,va,affectnet_expr; Hubert / wav2vec2 audio with --config.audio=logmel_mfcc,hubert
  --config.audio_models.hubert=/models/hubert-base-ls960 (local transformers folder, nothing is downloaded);
  the paper's best audio for EXPR and VA, Hubert + VGGish: --config.audio=hubert,vggish with also
  --config.audio_models.vggish=/models/vggish-10086976.pth [--config.audio_models.vggish_pca=...pth].
  Interrupted? Rerun the same command: tracks already written are skipped.

CPU preset, the README's stage 3 (on the embedded synthetic release, after stages 1 and 2's tiny presets):

  python -m abaw_jax.main --config=configs/extract_features.py:tiny --workdir=/tmp/abaw_features_tiny

  Sets `mae` (/tmp/abaw_mae_tiny), `au`, `expr`, `va` (/tmp/abaw_finetune_<task>_tiny) of the tiny ViT
  (width 192) at 64 px in fp32, and `logmel_mfcc` audio, over the 22 tracks (6,226 crops) of the 16-video
  release: about 90 s per set and 10 s of audio measured on a busy 2-core machine (70 frames/s), so a few
  minutes in all. A missing workdir stops with the command that makes it; leave sets out with e.g.
  --config.sets=mae. Static AU / EXPR / VA predictions of the fine-tuned heads land in
  <workdir>/predictions_<set>/.
"""

import ml_collections

from abaw_jax import tasks
from abaw_jax.data import release


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.job = "extract_features"
    config.data = release.data_config()

    # Set name -> encoder path (pretraining / fine-tuning workdir, params folder, official .pth, transformers
    # folder). Only the sets named in `sets` are extracted; an empty path for one of them is an error.
    config.encoders = ml_collections.ConfigDict(
        {
            **{key: "" for key in tasks.TASK_KEYS},
            "mae": "",
            "affectnet_expr": "",
            "affectnet_va": "",
            "rafdb_expr": "",
            "bp4d_au": "",
        }
    )
    config.sets = tasks.TASK_KEYS
    # Set name -> the task whose head its encoder carries; its per-frame outputs become the `static`
    # member of <workdir>/predictions_<set>/ (stage 5's ablation) when config.static_predictions.
    config.head_tasks = ml_collections.ConfigDict(
        {
            **{task.key: task.name for task in tasks.TASKS.values()},
            "mae": "",
            "affectnet_expr": "",
            "affectnet_va": "",
            "rafdb_expr": "",
            "bp4d_au": "",
        }
    )
    config.static_predictions = True

    # Audio kinds of abaw_jax.media.audio.make_featurizer; encoder kinds read their local model files here:
    # a transformers folder for hubert / wav2vec2, torchvggish's state dict (and optional PCA file) for vggish.
    config.audio = ("logmel_mfcc",)
    config.audio_models = ml_collections.ConfigDict({"hubert": "", "wav2vec2": "", "vggish": "", "vggish_pca": ""})

    config.model = ml_collections.ConfigDict()
    config.model.dtype = "auto"  # bfloat16 on accelerators, float32 on CPU
    config.model.attention = "auto"  # cuDNN flash attention on NVIDIA GPUs, XLA elsewhere
    config.storage_dtype = "auto"  # float16 with bfloat16 compute, float32 with float32 compute

    config.batch_size = 1024  # global, split over all devices
    config.decode_threads = 0  # host threads reading and decoding JPEGs; 0: one per CPU core
    config.prefetch_batches = 4
    config.log_every = 100  # batches

    if preset == "tiny":
        config.encoders.mae = "/tmp/abaw_mae_tiny"
        for key in tasks.TASK_KEYS:
            config.encoders[key] = f"/tmp/abaw_finetune_{key}_tiny"
        config.sets = ("mae",) + tasks.TASK_KEYS
        config.batch_size = 64
        config.log_every = 20
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for configs/extract_features.py; use '' or 'tiny'")
    return config
