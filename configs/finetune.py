r"""Stage 2: fine-tune the pretrained MAE encoder on one ABAW task (presets au, expr, va and their _tiny variants).

Paper setting (ViT-B/16 at 224 px; the encoder is a pretraining workdir, a params folder, an official MAE .pth
or a transformers folder), on a multi-GPU host or a pod, with the licensed Aff-Wild2 release:

  python -m abaw_jax.main --config=configs/finetune.py:au --workdir=/ckpt/finetune_au \
      --config.encoder=/ckpt/mae_faces --config.data.root=/data/affwild2

  Global average pooling + fc_norm + linear head; AU: eq. 1 (BCE, positives weighted per AU), EXPR: eq. 2
  (CE weighted per class), VA: eq. 4 (1 - CCC per dimension, tanh outputs); class weights max count / count
  over the training labels unless config.class_weights is set. The paper does not list its fine-tuning
  hyperparameters; these follow the official MAE ViT-B fine-tuning recipe (AdamW (0.9, 0.999), weight
  decay 0.05, layer-wise lr decay 0.65, drop path 0.1, base lr 5e-4 x batch / 256, warmup then per-step
  cosine), with 10 epochs of the Train_Set (its frames are strongly correlated in time) and one
  evaluation on the Validation_Set per epoch. A 5-fold split instead: --config.data.split=fold1 .. fold5.
  Extra EXPR images in the AffectNet / RAF-DB export layout (<root>/<class>/*.jpg):
  --config.data.image_folders=/data/affectnet_train,/data/rafdb_train (and --config.data.affwild2_train=False
  to train on them alone, as the paper's affn_EXPR / RAF_EXPR feature sets).

Other training sources (the paper's Table 6 encoders affn_EXPR, affn_VA, raf_EXPR, BP4D_AU), each release in its
official layout with crops cut once by data_prep/prepare_sources.py, trained and evaluated on its own split with
the metric averaged over the labels it has (tasks.SOURCE_LABELS; README "Other training sources"):

  python -m abaw_jax.main --config=configs/finetune.py:affectnet_expr --workdir=/ckpt/finetune_affn_expr \
      --config.encoder=/ckpt/mae_faces --config.data.source_root=/data/AffectNet \
      --config.data.source_crops=/data/affectnet_crops
  (affectnet_va the same; rafdb_expr: --config.data.source_root=/data/RAF-DB; bp4d_au: --config.data.source_root=
  /data/BP4D --config.data.source_crops=/data/bp4d_crops --config.data.source_fold=1..3)
  Each evaluation also scores the Aff-Wild2 validation split of config.data's release with the same metric over
  the same labels (eval_affwild2_* in metrics.jsonl, affwild2_* in best.json and export/finetune.json; the
  source's own metric still picks the best step); --config.data.affwild2_eval=False skips it.
  On the synthetic mini-releases (generated once into the cache), tiny ViT at 32 px, 300 steps, 1.5-2 minutes
  each on 2 shared cores (bp4d_au_tiny on whole crops: random crops cut its few-pixel AUs out), e.g.
    python -m abaw_jax.main --config=configs/finetune.py:bp4d_au_tiny --workdir=/tmp/abaw_finetune_bp4d_au_tiny
  Measured from the tiny pretraining, best step of 3 (own metric, the training-majority constant's in brackets;
  the Aff-Wild2 metric of the embedded synthetic release at that step, the constant's in brackets):
    affectnet_expr_tiny  F1 of 7 classes 0.204 (0.036), accuracy 0.244; Aff-Wild2 0.000 (0.001)  110 s
    affectnet_va_tiny    CCC 0.511 (0);                                  Aff-Wild2 0.136 (0)      112 s
    rafdb_expr_tiny      F1 of 7 classes 0.277 (0.036), accuracy 0.310; Aff-Wild2 0.089 (0.001)  104 s
    bp4d_au_tiny         F1 of 10 AUs 0.796 (0; always-on 0.306);       Aff-Wild2 0.436 (0; always-on 0.401)  99 s
  The expression models barely carry over to the synthetic Aff-Wild2 crops (AffectNet's predicts Sadness, absent
  from its validation labels, for 890 of 892 frames); valence / arousal and the AUs do.

CPU presets (a few minutes each on 2 cores, on the embedded synthetic release, from the tiny pretraining):

  python -m abaw_jax.main --config=configs/mae.py:tiny --workdir=/tmp/abaw_mae_tiny
  python -m abaw_jax.main --config=configs/finetune.py:au_tiny --workdir=/tmp/abaw_finetune_au_tiny
  python -m abaw_jax.main --config=configs/finetune.py:expr_tiny --workdir=/tmp/abaw_finetune_expr_tiny
  python -m abaw_jax.main --config=configs/finetune.py:va_tiny --workdir=/tmp/abaw_finetune_va_tiny

  Tiny ViT (width 192, 4 blocks, 64 px, 8 px patches), batch 32, 300 steps, evaluation every 100 steps:
  about 5 minutes each on 2 shared cores. Measured best validation scores (a constant predictor in brackets:
  the training majority class per AU / expression, the training mean for VA): AU mean F1 0.056 (0.0),
  EXPR mean F1 0.076 (0.062, always Surprise), VA mean CCC 0.039 (0.0). Above the constant predictor, but
  only just: 300 steps on top of a 300-step tiny MAE learn little of the synthetic expressions.

Writes in --workdir: metrics.jsonl (training loss, eval_metric, eval_accuracy for EXPR and eval_<class> per
evaluation, and eval_affwild2_* for another source), checkpoints/, best.json + best/ (best parameters by the task
metric), export/encoder (params_io, with head), export/encoder_official.* and export/finetune.json.
"""

import ml_collections

from abaw_jax import tasks
from abaw_jax.data import release


def get_config(preset: str = "au") -> ml_collections.ConfigDict:
    name = preset.removesuffix("_tiny")
    variant = "tiny" if preset.endswith("_tiny") else ""
    names = sorted(tasks.TASK_KEYS) + sorted(tasks.SOURCE_LABELS)
    if name not in names:
        raise ValueError(
            f"unknown preset {preset!r} for configs/finetune.py; use one of {names + [n + '_tiny' for n in names]}"
        )
    source = "affwild2" if name in tasks.TASK_KEYS else name.split("_")[0]
    task = name if source == "affwild2" else tasks.SOURCE_LABELS[name].task
    config = ml_collections.ConfigDict()
    config.job = "finetune"
    config.task = tasks.get_task(task).name
    config.seed = 0
    # A pretraining workdir, a params_io folder, an official MAE / timm .pth, or a transformers folder.
    # Empty in the tiny presets: the tiny pretraining workdir /tmp/abaw_mae_tiny.
    config.encoder = ""

    config.model = ml_collections.ConfigDict()
    # What the encoder must be; a mismatch stops with an error instead of fine-tuning the wrong model.
    config.model.size = "base"
    config.model.image_size = 224
    config.model.dtype = "bfloat16"
    config.model.remat = False
    config.model.attention = "auto"

    config.data = release.data_config()
    config.data.split = "official"  # or fold1 .. fold5 (video-level, over Train_Set + Validation_Set)
    config.data.fold_seed = 0
    config.data.image_folders = ""  # comma-separated <root>/<class>/*.jpg trees (EXPR only)
    config.data.affwild2_train = True
    # Or train and evaluate on another release (presets affectnet_expr, affectnet_va, rafdb_expr, bp4d_au): its
    # root (empty: the cached synthetic mini-release), its prepared crops (data_prep/prepare_sources.py; RAF-DB
    # may leave it empty for its own Image/aligned) and, for BP4D, the fold 1..3.
    config.data.source = source
    config.data.source_root = ""
    config.data.source_crops = ""
    config.data.source_fold = 1
    # With another source, each evaluation also scores the Aff-Wild2 validation split of config.data's release (the
    # synthetic one when config.data.root is empty) over the labels the source has; False skips it.
    config.data.affwild2_eval = True
    config.data.crop_scale = (0.2, 1.0)  # RandomResizedCrop area range
    config.data.worker_count = 8
    config.data.worker_buffer_size = 2

    config.class_weights = ()  # empty: max count / count over the training labels
    config.batch_size = 512
    config.eval_batch_size = 1024
    config.num_epochs = 10
    config.warmup_epochs = 1
    # When > 0, these replace the epoch-based counts.
    config.total_steps = 0
    config.warmup_steps = 0
    config.eval_every = 0  # steps; 0 = once per epoch
    config.base_lr = 5e-4
    config.b1 = 0.9
    config.b2 = 0.999
    config.weight_decay = 0.05
    config.layer_decay = 0.65
    config.drop_path = 0.1
    config.grad_clip = 0.0

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = 1

    config.log_every = 50
    config.checkpoint_every = 1000
    config.keep_checkpoints = 2

    if variant == "tiny":
        config.model.size = "tiny"
        config.model.image_size = 64
        config.model.dtype = "float32"
        config.data.worker_count = 2
        config.batch_size = 32
        config.eval_batch_size = 128
        config.total_steps = 300
        config.warmup_steps = 30
        config.eval_every = 100
        config.base_lr = 8e-3  # peak lr 1e-3 at batch 32
        config.log_every = 25
        config.checkpoint_every = 100
    if variant == "tiny" and source != "affwild2":
        # A mini-release holds a few hundred pictures, each seen about 50 times in 300 steps: 32 px crops (the
        # 64 px tiny MAE's position table resampled) and a doubled lr learn them in under a minute on 2 cores.
        config.model.image_size = 32
        config.base_lr = 1.6e-2  # peak lr 2e-3 at batch 32
    if variant == "tiny" and source == "bp4d":
        # Whole crops: an AU is a few pixels at 32 px (a raised brow, a lid, a mouth corner), and random crops down
        # to a fifth of the face cut it out or move it, so in 300 steps the model learns to predict no AU (from a
        # random-init encoder as in the tests: mean F1 0.14 with (0.2, 1.0), 0.82 with whole crops).
        config.data.crop_scale = (1.0, 1.0)
    return config
