"""One face track -> per-frame features -> every member's outputs -> post-processed outputs per task.

The same functions as the pipeline at each step, so the predictor reproduces evaluate's final outputs on a release
track: faces are cut as the release's crops are (`crop_face`: `media.align.align_face` on the detector's five
landmarks, the bundle's square crop of a box without them), crops decode at their stored size on the host and are
resized on the device (`data.device_images`, as feature extraction and fine-tuning's evaluation do) and go
through the encoder's pooled feature (the feature store's `extract_step`), rounded to the store's dtype; audio
features come from `media.audio`'s featurizer; members run over `clips.windowed_outputs` windows with
`models.fusion.ensemble_predict`; `eval.postprocess` fills, smooths, routes and combines. Encoders and members run
jitted on fixed-size batches (one compile each).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import clips, device_images
from abaw_jax.eval import postprocess, scene_router
from abaw_jax.media import align, faces
from abaw_jax.models import encoders, fusion
from abaw_jax.models.vit import ViT
from abaw_jax.predictor.bundle import Bundle

SCENES = ("auto", "reaction", "other")


@dataclasses.dataclass
class TaskOutputs:
    """Post-processed outputs of one task for a track's N frames: scores (N, C) and labels (final_outputs)."""

    scores: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class TrackPrediction:
    face: np.ndarray  # (N,) bool: a crop was given for the frame
    is_reaction: bool
    scene_source: str  # 'router', 'given' or 'none' (no router, no --scene: other)
    tasks: dict[str, TaskOutputs]
    notes: list[str]


def crop_face(frame: np.ndarray, box: faces.Box, crop: Mapping) -> bytes:
    """A bundle's crop (`Bundle.crop`) of one face as JPEG bytes: aligned on the box's landmarks when the bundle
    aligns and the detector gave them, else the square of `margin` box widths, centre moved down `center_dy` widths."""
    if "template" in crop and box.landmarks is not None:
        image = align.align_face(frame, np.asarray(box.landmarks), int(crop["size"]))
    else:
        shifted = faces.Box(box.x, box.y + crop["center_dy"] * box.w, box.w, box.h, box.score)
        image = faces.square_crop(frame, shifted, margin=crop["margin"], size=int(crop["size"]))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(crop["jpeg_quality"])])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a face crop")
    return data.tobytes()


def _encode(params, images_uint8, boxes, *, model: ViT):
    x = device_images.prepare_images(images_uint8, boxes, image_size=model.config.image_size)
    return model.apply({"params": params}, x, method=ViT.features).astype(jnp.float32)


class Predictor:
    """Runs a bundle on face tracks. `batch_size` crops per encoder call, `window_batch` windows per member call."""

    def __init__(self, bundle: Bundle, *, batch_size: int = 64, window_batch: int = 32, attention: str = "xla"):
        self.bundle = bundle
        self.batch_size, self.window_batch = batch_size, window_batch
        self._encoders = {}
        for name, entry in bundle.visual_sets.items():
            loaded = encoders.load_encoder(str(bundle.encoder_dir(name)))
            fn = jax.jit(functools.partial(_encode, model=ViT(loaded.config, attention=attention)))
            self._encoders[name] = (loaded.params, fn, np.dtype(entry["storage_dtype"]), loaded.config.width)
        self._featurizers = {name: bundle.featurizer(name) for name in bundle.audio_sets}
        self._dims = {n: d for m in bundle.tasks.values() for n, d in m.ensemble.feature_sets.items()}
        self._members = {}
        for key, model in bundle.tasks.items():
            ensemble = model.ensemble
            fn = jax.jit(
                functools.partial(
                    fusion.ensemble_predict, model=fusion.TMF(ensemble.config), kind=tasks.get_task(ensemble.task).kind
                )
            )
            self._members[key] = fn

    # ----------------------------------------------------------------------------------------- features

    def crop_face(self, frame: np.ndarray, box: faces.Box) -> bytes:
        """The bundle's JPEG crop of `box` in `frame` (module-level `crop_face`)."""
        return crop_face(frame, box, self.bundle.crop)

    def visual_features(self, name: str, jpegs: list[bytes]) -> np.ndarray:
        """(n, dim) pooled encoder features of JPEG crops, rounded to the feature store's dtype."""
        params, fn, dtype, width = self._encoders[name]
        out = np.zeros((len(jpegs), width), np.float32)
        # The bundle's crops all have its crop size; a crop of another size still fits (`device_images`).
        buffer_size = int(self.bundle.crop["size"])
        for start in range(0, len(jpegs), self.batch_size):
            chunk = jpegs[start : start + self.batch_size]
            pixels, boxes = device_images.empty_batch(self.batch_size, buffer_size)
            for i, data in enumerate(chunk):
                boxes[i] = device_images.decode_stored(data, pixels[i])
            out[start : start + len(chunk)] = np.asarray(fn(params, pixels, boxes))[: len(chunk)]
        return out.astype(dtype).astype(np.float32)

    def track_features(
        self, crops: Mapping[int, bytes], num_frames: int, waveform: np.ndarray | None, fps: float
    ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        """({set: (N, dim)}, face (N,), notes) for frames 1..N: crops by 1-based frame, 16 kHz mono audio or None."""
        frames = np.array(sorted(k for k in crops if 1 <= k <= num_frames), np.int64)
        face = np.zeros(num_frames, bool)
        face[frames - 1] = True
        values, notes = {}, []
        jpegs = [crops[int(k)] for k in frames]
        for name in self._encoders:
            part = np.zeros((num_frames, self._encoders[name][3]), np.float32)
            if len(frames):
                part[frames - 1] = self.visual_features(name, jpegs)
            values[name] = part
        for name, featurizer in self._featurizers.items():
            if waveform is None:
                values[name] = np.zeros((num_frames, self._dims[name]), np.float32)
                notes.append(
                    f"no audio stream: the {name} features are zeros, unlike anything the members trained "
                    "on (outputs lean on the faces alone)"
                )
            else:
                values[name] = np.asarray(featurizer(waveform, num_frames, fps), np.float32)
        if not face.any():
            notes.append("no face in any frame: every output is the members' no-face prior")
        return values, face, notes

    # ------------------------------------------------------------------------------------------ outputs

    def scene(self, values: dict[str, np.ndarray], face: np.ndarray, scene: str = "auto") -> tuple[bool, str]:
        if scene not in SCENES:
            raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
        if scene != "auto":
            return scene == "reaction", "given"
        if self.bundle.router is None:
            return False, "none"
        stats = scene_router.video_statistics(values[self.bundle.router_feature_set], face)
        return bool(self.bundle.router.predict(stats)[0]), "router"

    def member_outputs(self, task_key: str, values: dict[str, np.ndarray], face: np.ndarray) -> np.ndarray:
        """(M, N, C) every member's windowed, averaged outputs (members in the fusion export's order)."""
        ensemble = self.bundle.tasks[task_key].ensemble
        x = np.concatenate([values[name] for name in ensemble.feature_sets], axis=1)
        num_frames = len(face)
        track = clips.Tracks.from_lengths({"track": num_frames})
        fn = self._members[task_key]
        x, present = jnp.asarray(x), jnp.asarray(face)

        def apply(rows, mask):
            return fn(
                ensemble.params,
                ensemble.batch_stats,
                ensemble.feature_mean,
                ensemble.feature_std,
                x,
                present,
                rows,
                mask,
            )

        return clips.windowed_outputs(
            apply, track, track.names, ensemble.clip_len, ensemble.eval_stride, self.window_batch
        )

    def predict(
        self,
        crops: Mapping[int, bytes],
        num_frames: int,
        waveform: np.ndarray | None,
        fps: float,
        *,
        scene: str = "auto",
    ) -> TrackPrediction:
        values, face, notes = self.track_features(crops, num_frames, waveform, fps)
        is_reaction, source = self.scene(values, face, scene)
        outputs = {}
        mask = np.ones((1, num_frames), bool)
        for key, model in self.bundle.tasks.items():
            raw = self.member_outputs(key, values, face)
            order = [model.ensemble.members.index(m) for m in model.post.members]
            filled = postprocess.fill_members(raw[order][:, None], face[None], mask)
            scores, labels = postprocess.final_outputs(model.post, filled, mask, np.array([is_reaction]))
            outputs[key] = TaskOutputs(scores[0], labels[0])
        return TrackPrediction(face, is_reaction, source, outputs, notes)
