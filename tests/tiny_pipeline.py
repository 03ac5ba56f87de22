"""A pipeline-shaped workdir (`runtime.pipeline_dirs`) for the predictor's tests, built in about a minute on 2 cores.

Honest stubs only: the encoder is a small ViT with random weights (no MAE or fine-tuning run); the feature store,
the three fusion ensembles, evaluate and the bundle are real runs of those jobs and functions on the synthetic
release, with small settings. One visual set, `face`, serves all three tasks (the pipeline has one per task).
"""
import pathlib

import jax
import numpy as np

from abaw_jax.jobs import evaluate, extract_features, fusion
from abaw_jax.models import params_io
from abaw_jax.models.vit import ViTConfig
from abaw_jax.predictor import bundle
from abaw_jax.runtime.pipeline_dirs import PipelineDirs
from configs import evaluate as evaluate_configs
from configs import extract_features as extract_configs
from configs import fusion as fusion_configs

VIT = ViTConfig(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="gap")
TASKS = ("au", "expr", "va")
VISUAL_SET = "face"


def random_encoder(directory: pathlib.Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: (path[-1].key == "scale") + rng.normal(0, 0.2, x.shape).astype(np.float32),
        params_io.abstract_params(VIT))
    params_io.save_params(str(directory), params, VIT)


def build(root: pathlib.Path, release: pathlib.Path) -> PipelineDirs:
    dirs = PipelineDirs(str(root))
    encoder = pathlib.Path(dirs.finetune("expr")) / "export" / "encoder"
    random_encoder(encoder)

    config = extract_configs.get_config("tiny")
    config.data.root = str(release)
    config.encoders[VISUAL_SET] = str(encoder)
    config.head_tasks[VISUAL_SET] = ""
    config.sets, config.audio = (VISUAL_SET,), ("logmel_mfcc",)
    config.model.dtype, config.storage_dtype = "float32", "float32"
    config.batch_size, config.decode_threads, config.log_every = 64, 2, 1000
    extract_features.run(config, dirs.features)

    for task in TASKS:
        config = fusion_configs.get_config(f"{task}_tiny")
        config.features_dir, config.visual_sets, config.audio_sets = dirs.features, VISUAL_SET, "logmel_mfcc"
        config.data.root = str(release)
        config.clip_len, config.eval_stride, config.batch_clips, config.num_epochs = 32, 16, 8, 2
        config.model.depth, config.model.width, config.model.mlp_dim, config.model.proj_dim = 1, 32, 32, 64
        config.log_every = 1000
        fusion.run(config, dirs.fusion(task))

        config = evaluate_configs.get_config(f"{task}_tiny")
        config.fusion_workdir, config.fusion_preset = dirs.fusion(task), ""
        config.data.root = str(release)
        config.tuning.sigmas = (0.0, 1.0, 2.0, 4.0)
        config.tuning.thresholds = (0.3, 0.4, 0.5, 0.6, 0.7)
        config.tuning.expr_bias = (-0.5, 0.0, 0.5)
        config.tuning.bias_rounds = 1
        config.num_plots = 0
        evaluate.run(config, dirs.evaluate(task))
        data_config = config.data
    bundle.export_bundle(dirs, dirs.predictor, tasks=TASKS, data_config=data_config)
    return dirs
