"""The predictor bundle: everything `python -m abaw_jax.predict` needs from a trained pipeline, in one folder.

    <bundle>/bundle.json                 format version, crop geometry, visual sets, audio sets, tasks, router
    <bundle>/encoders/<set>/             each visual set's encoder (a copy of the encoder the features came from,
                                         `models.params_io` layout; `models.encoders.load_encoder` reads it)
    <bundle>/audio_models/<set>/         the model files of encoder audio sets (wav2vec2 / hubert folder, VGGish
                                         weights and PCA), copied from where the features were made
    <bundle>/fusion_<task>/              the task's fusion members (`models.fusion.save_ensemble`)
    <bundle>/scene_router.npz            the scene router (`eval.scene_router`): mean, scale, weights, bias

bundle.json:
  crop: how a face becomes a crop, JPEG-encoded at `jpeg_quality` (the release's crops are JPEGs: the predictor
    decodes its crops at their stored size and resizes them on the device, `data.device_images.prepare_images`).
    A face with five landmarks is aligned with `media.align.align_face` at `size` px onto the five-point
    `template` (its name, and its points at `size` in `template_points`); a box without landmarks (Haar) is cut
    as a square of side `margin` * box width centred on the box centre moved down by `center_dy` box widths,
    resized to `size` px. Bundles without `template` (made before alignment) cut every face as that square.
  visual_sets: {name: {encoder: relative folder, image_size, storage_dtype}}; features are the encoder's pooled
    `fc_norm` output of the ImageNet-normalised crop, rounded to storage_dtype like the feature store's.
  audio_sets: {name: the `media.audio.make_featurizer` arguments that made the set}: {kind, n_mels, n_mfcc,
    window} for spectral kinds, {kind, model_dir, layer} for wav2vec2 / hubert, {kind, vggish_weights,
    vggish_pca, vggish_hop} for vggish; model paths are relative to the bundle (`<bundle>/audio_models/<set>/`).
  tasks: {task: {fusion: relative folder, postprocess: `eval.postprocess.PostProcess.to_json()`}}.
  scene_router: {file, feature_set, train_videos, train_reaction_videos, validation_videos, validation_accuracy}
    or null (routing then needs --scene); fit on the Train_Set videos, measured on the other Validation_Set ones.

Everything is copied: the bundle does not point into the pipeline's stage folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from abaw_jax import tasks
from abaw_jax.data import affwild2, features, release
from abaw_jax.eval import postprocess, scene_router
from abaw_jax.media import align, audio
from abaw_jax.models import fusion
from abaw_jax.runtime.artefacts import RESULTS_FILE
from abaw_jax.runtime.pipeline_dirs import PipelineDirs
from abaw_jax.runtime.telemetry import log

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
ROUTER_FILE = "scene_router.npz"
_CROP_SIZE = 112
# Faces with landmarks are aligned as the release's crops are. For Haar boxes (no landmarks), the square most like
# those aligned crops: a grid search over margin and shift on the 22 frames (of every 6th in 4 one-face synthetic
# videos) where Haar found the face put the least mean absolute pixel difference (14.9 of 255, against 30 for the
# square tuned before the release's crops were aligned) at 0.9 box widths, centre moved up 0.06 widths; the rest is
# the face's tilt, which only landmarks undo.
DEFAULT_CROP = {
    "template": align.TEMPLATE_NAME,
    "template_points": align.template(_CROP_SIZE).round(4).tolist(),
    "size": _CROP_SIZE,
    "margin": 0.9,
    "center_dy": -0.06,
    "jpeg_quality": 95,
}


class BundleError(ValueError):
    """A bundle, or a pipeline folder it is made from, lacks something or holds something else."""


@dataclasses.dataclass
class TaskModel:
    ensemble: fusion.EnsembleExport
    post: postprocess.PostProcess


@dataclasses.dataclass
class Bundle:
    path: pathlib.Path
    crop: dict[str, Any]
    visual_sets: dict[str, dict[str, Any]]
    audio_sets: dict[str, dict[str, Any]]
    tasks: dict[str, TaskModel]
    router: scene_router.SceneRouter | None
    router_feature_set: str | None

    def featurizer(self, name: str) -> audio.Featurizer:
        """The audio featurizer of set `name`, with the bundle's copy of its model files."""
        settings = dict(self.audio_sets[name])
        for key in ("model_dir", "vggish_weights", "vggish_pca"):
            if settings.get(key):
                settings[key] = self.path / settings[key]
        return audio.make_featurizer(**settings)

    def encoder_dir(self, name: str) -> pathlib.Path:
        return self.path / self.visual_sets[name]["encoder"]


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read ({e})") from e


def export_bundle(
    dirs: PipelineDirs, out_dir: str, *, tasks: Sequence[str], data_config, crop: dict[str, Any] | None = None
) -> None:
    """Writes the bundle of the pipeline in `dirs` for `tasks` (au, expr, va) into `out_dir` (replaced).

    Reads each task's fusion export and evaluate results, the feature store's manifests (which encoder and audio
    settings made the features the members were trained on) and the release (`data_config`) for the router."""
    out = pathlib.Path(out_dir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    store_dir = pathlib.Path(dirs.features)
    visual, audio_sets, task_entries = {}, {}, {}
    for task_key in tasks:
        fusion_dir = pathlib.Path(dirs.fusion(task_key)) / fusion.EXPORT_DIR
        try:
            ensemble = fusion.load_ensemble(str(fusion_dir))
        except ValueError as e:
            raise BundleError(f"task {task_key}: {e}") from e
        results = _read_json(pathlib.Path(dirs.evaluate(task_key)) / RESULTS_FILE)
        if "postprocess" not in results:
            raise BundleError(f"{dirs.evaluate(task_key)}/{RESULTS_FILE} has no 'postprocess' entry (rerun evaluate)")
        post = postprocess.PostProcess.from_json(results["postprocess"])
        missing = [m for m in post.members if m not in ensemble.members]
        if missing:
            raise BundleError(
                f"evaluate_{task_key} combines members {missing} that {fusion_dir} lacks ({list(ensemble.members)})"
            )
        for name, dim in ensemble.feature_sets.items():
            if name in visual or name in audio_sets:
                continue
            feature_set = features.open_set(store_dir / name, name)
            if feature_set.dim != dim:
                raise BundleError(f"{store_dir / name}: dim {feature_set.dim}, but {fusion_dir} was trained on {dim}")
            if feature_set.kind == "visual":
                visual[name] = _copy_encoder(feature_set, staging / "encoders" / name)
            else:
                audio_sets[name] = _audio_settings(feature_set, staging / "audio_models" / name)
        shutil.copytree(fusion_dir, staging / f"fusion_{task_key}")
        task_entries[task_key] = {"task": ensemble.task, "fusion": f"fusion_{task_key}", "postprocess": post.to_json()}
    router_entry = _export_router(store_dir, list(visual), data_config, staging / ROUTER_FILE)
    description = {
        "format_version": FORMAT_VERSION,
        "crop": dict(crop or DEFAULT_CROP),
        "visual_sets": visual,
        "audio_sets": audio_sets,
        "tasks": task_entries,
        "scene_router": router_entry,
    }
    (staging / BUNDLE_JSON).write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def _copy_encoder(feature_set: features.VisualSet, target: pathlib.Path) -> dict[str, Any]:
    encoder = feature_set.manifest.get("encoder", {})
    source = pathlib.Path(encoder.get("source", ""))
    if not encoder.get("source") or not source.is_dir():
        raise BundleError(
            f"{feature_set.directory}/{features.MANIFEST}: its encoder source {str(source)!r} is not "
            "a folder (the bundle copies the encoder that made the features)"
        )
    shutil.copytree(source, target)
    return {
        "encoder": str(target.relative_to(target.parent.parent)),
        "image_size": encoder["config"]["image_size"],
        "storage_dtype": feature_set.manifest["dtype"],
        "sha256": encoder.get("sha256"),
    }


def _audio_settings(feature_set: features.AudioSet, target: pathlib.Path) -> dict[str, Any]:
    """The `media.audio.make_featurizer` arguments that made `feature_set`; model files are copied to `target`
    and named relative to the bundle."""
    described = sorted(feature_set.directory.glob("*.json"))  # features.AudioSet has checked there is one
    first = _read_json(described[0])
    kind = first["kind"]
    relative = lambda path: str(path.relative_to(target.parent.parent))
    if kind in audio.SPECTRAL_KINDS:
        featurizer = audio.make_featurizer(kind)
        return {
            "kind": kind,
            **{key: int(first.get(key, getattr(featurizer, key))) for key in ("n_mels", "n_mfcc", "window")},
        }
    if kind in audio.ENCODER_KINDS:
        source = pathlib.Path(first.get("model_dir") or "")
        if not (source / "config.json").is_file():
            raise BundleError(
                f"{described[0]}: its {kind} model folder {str(source)!r} is gone (the bundle copies "
                "the model that made the features)"
            )
        shutil.copytree(source, target)
        return {
            "kind": kind,
            "model_dir": relative(target),
            "layer": None if first.get("layer", "last") == "last" else int(first["layer"]),
        }
    if kind == audio.VGGISH_KIND:
        settings = {"kind": kind, "vggish_hop": float(first["example_hop_seconds"]), "vggish_pca": None}
        target.mkdir(parents=True)
        for key, file in (("vggish_weights", first.get("weights")), ("vggish_pca", first.get("pca"))):
            if key == "vggish_pca" and not file:
                continue
            if not file or not pathlib.Path(file).is_file():
                raise BundleError(
                    f"{described[0]}: its VGGish file {file!r} is gone (the bundle copies the "
                    "weights that made the features)"
                )
            shutil.copy2(file, target / pathlib.Path(file).name)
            settings[key] = relative(target / pathlib.Path(file).name)
        return settings
    raise BundleError(f"{described[0]}: unknown audio kind {kind!r}")


def _export_router(store_dir: pathlib.Path, visual: list[str], data_config, target: pathlib.Path) -> dict | None:
    """Fits the scene router on the Train_Set videos' statistics of the first visual set, and measures it on the
    Validation_Set videos that no task trains on; None without a reaction list."""
    paths = release.resolve(data_config)
    if paths.reaction_list is None or not visual:
        return None
    name = visual[0]
    feature_set = features.open_set(store_dir / name, name)
    listed = affwild2.read_video_list(paths.reaction_list)
    train = {p.stem for task in tasks.TASKS for p in _split_files(paths, task, "Train_Set")}
    validation = {p.stem for task in tasks.TASKS for p in _split_files(paths, task, "Validation_Set")} - train
    videos = sorted((train | validation) & set(feature_set.tracks()))
    stats = np.stack([scene_router.video_statistics(*feature_set.load(t)) for t in videos])
    truth = np.array([affwild2.is_listed(t, listed) for t in videos])
    try:
        router, fit = scene_router.fit_and_validate(
            stats, truth, np.isin(videos, list(train)), np.isin(videos, list(validation))
        )
    except ValueError as e:
        raise BundleError(f"scene router on the Train_Set tracks of {store_dir / name}: {e}") from e
    router.save(target)
    log(
        f"Scene router for new videos ({name!r}): fit on {fit['train_videos']} Train_Set videos "
        f"({fit['train_reaction_videos']} reaction), accuracy {fit['validation_accuracy']:.3f} on "
        f"{fit['validation_videos']} Validation_Set videos"
    )
    return {"file": ROUTER_FILE, "feature_set": name, **fit}


def _split_files(paths: release.ReleasePaths, task: str, split: str) -> list[pathlib.Path]:
    try:
        return sorted((affwild2.find_task_dir(paths.annotations, task) / split).glob("*.txt"))
    except FileNotFoundError:
        return []


def _check_template(crop: dict[str, Any], where: pathlib.Path) -> None:
    """A bundle's models saw crops aligned on its template: refuse one that this code's alignment cannot reproduce."""
    if "template" not in crop:
        return
    points = np.asarray(crop.get("template_points", []), np.float64)
    ours = align.template(int(crop["size"]))
    if crop["template"] != align.TEMPLATE_NAME or points.shape != ours.shape or np.abs(points - ours).max() > 1e-3:
        raise BundleError(
            f"{where}: its crops are aligned on template {crop['template']!r} {points.tolist()}, but "
            f"this abaw_jax aligns on {align.TEMPLATE_NAME!r} {ours.round(4).tolist()} at {crop['size']} "
            "px; predictions would see crops unlike the models' training crops"
        )


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Reads a bundle folder, or the bundle of a pipeline workdir (`<path>/predictor`)."""
    path = pathlib.Path(path)
    in_workdir = pathlib.Path(PipelineDirs(str(path)).predictor)
    if not (path / BUNDLE_JSON).exists() and (in_workdir / BUNDLE_JSON).exists():
        path = in_workdir
    if not (path / BUNDLE_JSON).exists():
        raise BundleError(
            f"{path}: neither a predictor bundle ({BUNDLE_JSON}) nor a pipeline workdir with predictor/{BUNDLE_JSON}"
        )
    description = _read_json(path / BUNDLE_JSON)
    if description.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path / BUNDLE_JSON}: format_version {description.get('format_version')!r}, this "
            f"abaw_jax reads {FORMAT_VERSION}"
        )
    _check_template(description["crop"], path / BUNDLE_JSON)
    models = {}
    for key, entry in description["tasks"].items():
        try:
            ensemble = fusion.load_ensemble(str(path / entry["fusion"]))
        except ValueError as e:
            raise BundleError(str(e)) from e
        models[key] = TaskModel(ensemble, postprocess.PostProcess.from_json(entry["postprocess"]))
    router, router_set = None, None
    if description.get("scene_router"):
        router = scene_router.SceneRouter.load(path / description["scene_router"]["file"])
        router_set = description["scene_router"]["feature_set"]
    return Bundle(
        path, description["crop"], description["visual_sets"], description["audio_sets"], models, router, router_set
    )
