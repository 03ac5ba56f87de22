r"""The whole method in one command: pretraining, fine-tuning, features, fusion ensembles, evaluation, report.

  python -m abaw_jax.main --config=configs/abaw.py:tiny --workdir=/tmp/abaw

runs, each in its own sub-folder of the workdir (`abaw_jax/runtime/pipeline_dirs.py`):
  mae                     stage 1, configs/mae.py                MAE pretraining
  finetune_<task>         stage 2, configs/finetune.py:<task>     per task: au, expr, va
  features                stage 3, configs/extract_features.py   the three fine-tuned sets + log-mel/MFCC audio
  fusion_<task>           stage 4, configs/fusion.py:<task>       TMF ensemble on visual + audio features
  fusion_<task>_visual    stage 4 again on visual features only  (the audio ablation; config.audio_ablation)
  evaluate_<task>[_visual] stage 5, configs/evaluate.py:<task>   tuning, Tables 1-3/5, submission files
  report                  report.md + figures (the paper's tables, the ablation, the claims checked)
  predictor               the bundle `python -m abaw_jax.predict --model=<workdir>` uses on new videos

Every stage's settings are the stage config's own, under its name here, and can be overridden the same way:
  --config.fusion.expr.members=official,whole  --config.finetune.au.total_steps=500  --config.mae.batch_size=64
`config.data` (the release) applies to every stage that reads the release. A stage whose folder holds a
finished run with the same settings and the same inputs is skipped; a killed run resumes inside the stage it
stopped in; changed settings rerun that stage (its folder is cleared) and every stage after it that reads it.
Each stage folder has `stage.json` (settings, fingerprint, wall time) and `stage_config.py`, which reruns the
stage alone: `python -m abaw_jax.main --config=<stage folder>/stage_config.py --workdir=<stage folder>`.

Paper preset (default): ViT-B/16 MAE on the face shards in --config.mae.data.data_dir (or skip pretraining with
--config.mae_encoder=<official MAE .pth, params folder or pretraining workdir>), the licensed release in
--config.data.root. Stage costs on one H100 (bf16): pretraining 4.5 M faces x 800 epochs is ~3.5 days on
8 H100 at 40% MFU (configs/mae.py); fine-tuning 10 epochs of ~1.5 M Train_Set crops per task, ~3-4 h each at
the measured ~4,400 img/s training rate; features ~3 M crops x 3 sets at >10,000 frames/s, ~15 min; fusion
(8 members x 50 epochs on features in device memory) and evaluation, minutes. The paper's official-split
results, to compare with report.md's Tables 1-3: AU F1 56.94%, EXPR F1 55.55%, VA mean CCC 0.6027.

`tiny` preset (CPU): the embedded synthetic release (16 videos, 22 tracks), the tiny ViT (width 192, 64 px),
shortened stages (MAE 200 steps, fine-tuning 200 steps per task, fusion 10 epochs): about 15 minutes on 2
cores. Expect scores only somewhat above a constant predictor (the tiny encoder learns little in 200 steps);
report.md says, claim by claim, which of the paper's effects show on this run.

Table 6 (the paper's feature combinations; README "Table 6"): `--config.table6=all` or row numbers adds a fusion
stage per task and row, `fusion_<task>_table6_<row>` (the task's own set + the row's sets, official member only);
a set of another release (affectnet_va, affectnet_expr, rafdb_expr, bp4d_au) named there or in a fusion's
visual_sets adds its fine-tuning stage `finetune_<set>` (config.finetune.<set>, from the same MAE encoder), and
the audio sets need their model files in config.features.audio_models. `table6_tiny` (CPU): the `tiny` preset
plus rows 3 and 4 on the synthetic mini-releases, with the untrained audio models of
`python -m data_prep.make_stand_in_audio --out_dir=/tmp/abaw_stand_in_audio` (run that first).
Measured: 15 minutes on 2 shared cores (the tiny preset's stages plus ~4 minutes for the four extra encoders and
~1 for the six row fusions); report.md's Table 6 holds rows 3 and 4 for every task (README "Table 6": row 4,
with the BP4D encoder, beats the method's own fusion on all three tasks of the synthetic release).

`claims` and `claims_control` presets (CPU): the claims study, a test of this machinery (not of the paper's
method): the pipeline at the tiny preset's sizes on a synthetic release built to decide the paper's claims,
`data/synthetic.py`'s PRESETS["claims"]: 64 annotated videos and 16 test videos of about 90 frames (at least
12 test tracks per task, so the report's bootstrap over videos can decide), with every premise the report's
claims rest on built in (`synthetic.Premises`: temporal context in the labels for TMF and smoothing, audio
carrying arousal for audio helps VA, reaction videos with their own label distribution and face-to-label
mapping for SDD, per-person face styles for the ensemble). `claims_control` runs the same on
PRESETS["claims_control"], the same videos with every premise off. Every random seed of the run (the release,
MAE, fine-tuning, folds, fusion) follows `config.seed`; changing any one of them in these presets changes
all. Only VA's ensemble is trained again without audio (the audio claim is VA's). The pipeline has no notion of
several seeds, so each seed is its own workdir; three seeds of each, two runs at a time (one per core):

  for s in 0 1 2; do
    python -m abaw_jax.main --config=configs/abaw.py:claims --workdir=/tmp/claims/on_s$s --config.seed=$s &
    python -m abaw_jax.main --config=configs/abaw.py:claims_control --workdir=/tmp/claims/off_s$s --config.seed=$s
    wait
  done

Cost: one `claims` run (seed 0, with the audio ablation of all three tasks, as first timed) took 1,187 CPU
seconds (40 minutes of wall time on 2 cores shared with other jobs, load 6-15): fine-tuning ~150 CPU s per task,
fusion ~80 per ensemble, features ~100, MAE and the releases the rest (each seed and preset generates its release
into the cache once, and the MAE stage builds its faces from a default-premise release of the same size). With
the VA ablation alone, ~1,020 CPU s a run: the six runs are ~100 CPU minutes, about an hour with both cores busy.
Expected result: with the premises each claim holds on the test sets; in the control, smoothing, audio and SDD
are undecided or do not hold, while "TMF helps" (TMF still fuses three encoders' features) and "the ensemble
helps" (members still differ by initialisation and folds) may hold in both.
"""

import importlib.util
import os

import ml_collections

from abaw_jax.data import release
from abaw_jax.tasks import SOURCE_LABELS
from abaw_jax.tasks import TASK_KEYS as TASKS

STAND_IN_AUDIO_DIR = "/tmp/abaw_stand_in_audio"


def _stage_config(name: str, preset: str) -> ml_collections.ConfigDict:
    """configs/<name>.py:<preset>, loaded by path (config files are not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"abaw_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


PRESETS = ("", "tiny", "table6_tiny", "claims", "claims_control")


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for configs/abaw.py; use one of {list(PRESETS)}")
    tiny = preset != ""
    config = ml_collections.ConfigDict()
    config.job = "pipeline"
    config.tasks = ",".join(TASKS)
    # Tasks whose ensemble is trained a second time on visual features alone (Table 5's audio row).
    config.audio_ablation = ",".join(TASKS)
    config.data = release.data_config()
    # A pretrained encoder to fine-tune instead of running stage 1 (an official MAE .pth / .safetensors, a
    # params folder, a transformers folder or a pretraining workdir).
    config.mae_encoder = ""

    stage_preset = "tiny" if tiny else ""
    config.mae = _stage_config("mae", stage_preset)
    # The tasks' own encoders, and those of the other releases (Table 6's affn_VA, ...): a source's stage runs
    # only when a fusion stage or config.features.sets names its set.
    config.finetune = ml_collections.ConfigDict(
        {t: _stage_config("finetune", t + ("_tiny" if tiny else "")) for t in (*TASKS, *SOURCE_LABELS)}
    )
    config.features = _stage_config("extract_features", stage_preset)
    config.features.sets = TASKS
    config.fusion = ml_collections.ConfigDict(
        {t: _stage_config("fusion", t + ("_tiny" if tiny else "")) for t in TASKS}
    )
    config.evaluate = ml_collections.ConfigDict(
        {t: _stage_config("evaluate", t + ("_tiny" if tiny else "")) for t in TASKS}
    )
    # Rows of the paper's Table 6 to run as an ablation ("1,3,6" or "all"; `abaw_jax/table6.py`): per task and
    # row, the official fusion member on the task's own set + the row's visual and audio sets.
    config.table6 = ""

    if tiny:
        # The 20-minute budget on 2 cores: shorter stages than the stand-alone tiny presets.
        config.mae.total_steps = 200
        config.mae.warmup_steps = 20
        config.mae.image_every = 200
        for task in TASKS:
            config.finetune[task].total_steps = 200
            config.finetune[task].warmup_steps = 20
            config.fusion[task].num_epochs = 10
    if preset.startswith("claims"):
        _claims_study(config, preset)
    if preset == "table6_tiny":
        # Rows 3 and 4: every source encoder, with and without Hubert. The untrained audio encoders of
        # data_prep/make_stand_in_audio.py stand in for the published ones (all three, for --config.table6=all).
        config.table6 = "3,4"
        for kind in ("hubert", "wav2vec2"):
            config.features.audio_models[kind] = f"{STAND_IN_AUDIO_DIR}/{kind}"
        config.features.audio_models.vggish = f"{STAND_IN_AUDIO_DIR}/vggish.pth"
    return config


def _claims_study(config: ml_collections.ConfigDict, preset: str) -> None:
    """The claims study's release and one seed for every random draw of the run (see the module docstring)."""
    config.data = release.data_config(preset=preset)
    config.audio_ablation = "va"
    config.seed = 0
    seed = config.get_ref("seed")
    config.data.synthetic_seed = seed
    config.mae.seed = seed
    for task in TASKS:
        config.finetune[task].seed = seed
        config.finetune[task].data.fold_seed = seed
        config.fusion[task].seed = seed
        config.fusion[task].fold_seed = seed
