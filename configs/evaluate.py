r"""Stage 5: ensemble evaluation, smoothing and threshold tuning, and ABAW submission files (the paper's 3.3-3.4).

Paper recipe for a task (TASK in au, expr, va), on the fusion job's workdir and the release it used:

  python -m abaw_jax.main --config=configs/evaluate.py:expr --workdir=/ckpt/evaluate_expr \
      --config.fusion_workdir=/ckpt/fusion_expr --config.data.root=/data/affwild2

  Reads <fusion_workdir>/predictions (members fold1..fold5, official, whole, reaction), fills frames without a
  face, tunes on out-of-fold predictions the smoothing sigma (32 values, 0 included), the 12 AU thresholds (AU)
  or per-class biases (EXPR), and writes tables.md / results.json (the paper's Tables 1-3 and a Table-5 style
  ablation), submissions/<TASK>.txt for the test list (checked against the example file), and plots/*.png.
  A few seconds to a minute on CPU for all of Aff-Wild2, most of it reading the predictions.

CPU presets on the tiny fusion runs (`au_tiny`, `expr_tiny`, `va_tiny`; about 20-40 s on 2 cores):

  python -m abaw_jax.main --config=configs/evaluate.py:expr_tiny --workdir=/tmp/abaw_evaluate_expr_tiny

  Reads /tmp/abaw_fusion_expr_tiny (made by `configs/fusion.py:expr_tiny`) and the embedded synthetic release;
  expect smoothing to raise the out-of-fold metric and the synthetic test metric to be printed.

Options: --config.ensemble.method=soft (mean probabilities), --config.ensemble.reaction_routing=combined
(reaction videos use the reaction member together with the general ones), --config.scene_routing=router (an
automatic scene classifier on --config.features_dir instead of the reaction list) or none,
--config.static_predictions=DIR (a predictions folder with member `static`: the fine-tuned encoder's own
per-frame predictions, compared with TMF in the ablation).
"""

import ml_collections

from abaw_jax import tasks
from abaw_jax.data import release


def get_config(preset: str = "expr") -> ml_collections.ConfigDict:
    task_key, _, variant = preset.partition("_")
    if task_key not in tasks.TASK_KEYS or variant not in ("", "tiny"):
        raise ValueError(
            f"unknown preset {preset!r} for configs/evaluate.py; use one of "
            f"{[t + v for t in tasks.TASK_KEYS for v in ('', '_tiny')]}"
        )
    config = ml_collections.ConfigDict()
    config.job = "evaluate"
    config.task = tasks.get_task(task_key).name
    config.fusion_workdir = ""
    # The fusion preset that makes fusion_workdir, named in the error when it is missing (tiny presets).
    config.fusion_preset = ""
    # Empty: <fusion_workdir>/predictions.
    config.predictions_dir = ""
    config.data = release.data_config()

    config.fold_members = ("fold1", "fold2", "fold3", "fold4", "fold5")
    config.official_member = "official"
    config.ensemble = ml_collections.ConfigDict()
    config.ensemble.method = "vote"
    # The members combined for videos that are not reaction videos (the paper: the folds and whole).
    config.ensemble.general = ("fold1", "fold2", "fold3", "fold4", "fold5", "whole")
    config.ensemble.reaction_member = "reaction"
    config.ensemble.reaction_routing = "alone"
    # list: the release's reaction list (the paper's hand-picked SDD); router: a classifier on visual feature
    # statistics trained on the training videos' list membership (needs features_dir); none: no routing.
    config.scene_routing = "list"
    config.features_dir = ""
    config.router_feature_set = ""

    config.tuning = ml_collections.ConfigDict()
    config.tuning.sigmas = (0.0,) + tuple(round(0.5 * 1.125**i, 4) for i in range(31))
    config.tuning.thresholds = tuple(round(0.05 + 0.025 * i, 4) for i in range(37))
    config.tuning.expr_bias = tuple(round(-1.5 + 0.1 * i, 4) for i in range(31))
    config.tuning.bias_rounds = 2
    # Frames per step of the streamed grid evaluation (memory ~ chunk x channels x grid size x 4 bytes x 3).
    config.tuning.chunk = 16384

    config.static_predictions = ""
    config.num_plots = 3

    if variant == "tiny":
        config.fusion_workdir = f"/tmp/abaw_fusion_{task_key}_tiny"
        config.fusion_preset = f"{task_key}_tiny"
        config.num_plots = 2
    return config
