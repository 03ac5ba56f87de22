"""A synthetic dataset in the official Aff-Wild2 layout, deterministic from a seed.

`generate(out_dir)` writes (see `abaw_jax.data.affwild2` for the formats):

  annotations/{AU_Detection_Challenge,EXPR_Recognition_Challenge,VA_Estimation_Challenge}/
      {Train_Set,Validation_Set}/<name>.txt
  cropped_aligned/<name>/<k:05d>.jpg           face crops (112x112 by default), 1-based
  videos/<video>.mp4                           mpeg4 video + AAC audio; one file per `_left`/`_right` pair
  test_set/names_of_videos_in_each_test_set/<task folder>_test_set_release.txt
  test_set/prediction_files_format/CVPR_6th_ABAW_<AU|Expr|VA>_test_set_example.txt
  test_set/ground_truth/<task folder>/<name>.txt   labels of the test videos, for end-to-end scoring
  reaction_videos.txt                          source videos of the "reaction" scene type
  generation.json, README.md                   arguments, seed, per-video metadata and these rules
  face_landmarks.npz                           the five landmarks drawn in every frame, per annotation name

Generation rules.

Latent state. Each person has 12 AU intensities in [0, 1]. Over time the person moves between
expression targets: segments of 24-96 frames, each with a target expression drawn from the
scene's distribution and a target AU vector (the expression's AUs at 0.7-1.0, the rest at 0-0.2).
The piecewise-constant targets are smoothed with a Gaussian (sigma 5 frames) and a slow drift
(Gaussian-filtered noise, std 0.06) is added. Labels come from this smooth state; the rendered face
uses the state plus independent per-frame jitter (std 0.12) and pixel noise, so per-frame predictions
are noisy around a smooth truth and temporal smoothing helps.

Labels from the state (an AU is active when its smooth intensity exceeds 0.5):
  AU          the 12 activations as 0/1.
  EXPR        first matching rule: Happiness = AU6 & AU12; Fear = AU1 & AU2 & AU4 & AU25;
              Surprise = AU1 & AU2 & (AU25 | AU26) & not AU4; Sadness = AU1 & AU4 & AU15;
              Anger = AU4 & AU7 & (AU23 | AU24); Disgust = AU10; Neutral = no active AU;
              Other = anything else.
  valence     tanh(1.6 (0.55 AU12 + 0.35 AU6 - 0.45 AU15 - 0.35 AU4 - 0.30 AU10 - 0.15 AU23
              - 0.15 AU24 + 0.05)) + N(0, 0.02), clipped to [-1, 1]   (AU names = intensities)
  arousal     tanh(1.6 (0.30 AU1 + 0.30 AU2 + 0.25 AU4 + 0.20 AU7 + 0.15 AU6 + 0.25 AU25
              + 0.45 AU26 - 0.45)) + N(0, 0.02), clipped to [-1, 1]

Rendering. A frontal head and shoulders drawn with anti-aliased primitives and blurred, shaded like a
real face (skin darker towards the outline, eye sockets, brows, a lit nose bridge with nostrils, lips,
ears, hair) so that the CenterFace detector (`media.face_detector`) finds it, and OpenCV's Haar
frontal-face cascade too. AUs move visible geometry: AU1 inner brow up, AU2 outer brow up, AU4 brows
down and together, AU6 cheeks up and eyes narrowed, AU7 lids tightened, AU10 upper lip up with
nasolabial folds, AU12 lip corners up and out, AU15 lip corners down, AU23 lips tightened (thinner,
narrower), AU24 lips pressed (thin), AU25 lips parted, AU26 jaw dropped (longer face, wider opening,
teeth showing). Identity (skin tone, hair colour, face width and length, eye spacing) varies per
person; the head drifts, sways and tilts (in-plane roll, std 6 degrees) slowly. The renderer knows
where it drew each face's eyes, nose tip and mouth corners: crops are `media.align.align_face` of the
frame at those five landmarks (the same alignment `crop_faces` and `predict` apply to the detector's
landmarks), and `face_landmarks.npz` keeps them, {annotation name: (frames, 5, 2) x, y pixels}.

Scenes. "reaction" videos: a dark room lit by a bluish screen, with a bright screen rectangle behind
the person and a cool cast on the face; expressions mostly happiness and surprise. "other" videos:
bright warm rooms with furniture-like rectangles and stripes; neutral, sadness, anger, disgust, fear
and other dominate. See `EXPRESSION_PRIORS`.

Invalid and missing data. Each annotation file gets one run of invalid rows (AU all -1, EXPR -1,
VA -5). Some frames have no crop: short runs where an object occludes the face (also drawn in the
video), and 0-4 frames at the end, so annotation files are longer than the crop lists.

Audio. A voiced tone (5 harmonics, syllable-rate envelope, breath noise) whose pitch
(110 + 140 (a + 1) / 2 Hz) and loudness (0.02 + 0.3 ((a + 1) / 2)^1.5) follow arousal a (for a pair,
the mean of both people).

Videos: `<i>-30-<W>x<H>` or a bare number; every fourth video holds two people (`_left` / `_right`).
A person's split (Train_Set / Validation_Set) is shared by all tasks and by both halves of a pair;
a person has no AU file with probability 0.2 and no VA file with probability 0.2 (never both; the
real release has different video sets per task).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Sequence

import av
import cv2
import numpy as np
from scipy import ndimage

from abaw_jax import tasks
from abaw_jax.data import affwild2
from abaw_jax.media import align

SCENES = ("reaction", "other")
# Target-expression probabilities, in tasks.EXPR.label_names order.
EXPRESSION_PRIORS = {
    "reaction": (0.15, 0.03, 0.04, 0.05, 0.35, 0.03, 0.25, 0.10),
    "other": (0.22, 0.13, 0.11, 0.08, 0.08, 0.15, 0.05, 0.18),
}
# AUs that are switched on for each target expression: always, then each optional one with its prob.
_EXPRESSION_AUS = {
    "Neutral": ((), ()),
    "Anger": (("AU4", "AU7"), (("AU23", 0.7), ("AU24", 0.6))),
    "Disgust": (("AU10",), (("AU4", 0.5), ("AU25", 0.3))),
    "Fear": (("AU1", "AU2", "AU4", "AU25"), (("AU26", 0.4),)),
    "Happiness": (("AU6", "AU12"), (("AU25", 0.5), ("AU26", 0.2))),
    "Sadness": (("AU1", "AU4", "AU15"), (("AU24", 0.2),)),
    "Surprise": (("AU1", "AU2", "AU25"), (("AU26", 0.6),)),
}
# "Other" switches on one or two of these, which alone match no rule.
_OTHER_AUS = ("AU1", "AU2", "AU7", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
# Premises.reaction_mapping: the label a reaction video gives each class of the rules (Fear 3 <-> Surprise 6).
_REACTION_EXPRESSIONS = np.array([0, 1, 2, 6, 4, 5, 3, 7])

_AU_INDEX = {name: i for i, name in enumerate(tasks.AU.label_names)}
_ACTIVE_THRESHOLD = 0.5
_SMOOTH_SIGMA = 5.0
_DRIFT_SIGMA, _DRIFT_STD = 12.0, 0.06
_RENDER_JITTER = 0.12
_VA_NOISE = 0.02
_FPS = 30
_SAMPLE_RATE = 16000
_ROLL_STD = 6.0  # degrees of in-plane head tilt (std of a slow walk)
_BLUR_SIGMA = 0.8  # pixels: a camera's softness
# Sensor noise, std in 8-bit levels: with it the aligned crops (faces enlarged about 1.5x) keep the texture of a real
# crop (Laplacian variance median 66 and at least 24, against median 19 with noise 2.5 and blur 1.2; build_face_shards
# drops crops under 20 as blurry), and CenterFace finds as many faces.
_NOISE_STD = 6.0
LANDMARKS_FILE = "face_landmarks.npz"


@dataclasses.dataclass(frozen=True)
class Premises:
    """What the generator builds into the data for each of the paper's claims that the report checks.

    Each switch on builds in the premise under which the claim should hold; off is its control. `Premises()` is
    the default generator (the embedded release, byte for byte), `PRESETS` holds the claims study's releases.
    The switches other than reaction_priors draw from random streams of their own (one per switch and video),
    so turning one on or off changes nothing else in the release; reaction_priors changes which expressions a
    reaction video's people draw, and with them the later draws of that video (identities, task gaps, invalid
    runs), never a video's scene, length, split or name.

    temporal_context (default on; claims "TMF helps", "smoothing helps"): on, each person's AU state moves
      smoothly between expression segments (the module docstring), so a frame's labels are predictable from
      its neighbours beyond what its own noisy face shows. Off, the same per-frame states are shuffled in time
      within each person (labels and faces shuffled together, the face still shows the state plus its
      per-frame jitter): no context beyond the frame carries information about its labels, so smoothing or a
      temporal model can only average in unrelated frames. TMF still fuses three encoders' features and audio;
      that part of its gain is not removed.
    audio_arousal (default on; claim "audio helps VA"): on, the audio's pitch and loudness follow the arousal
      label (module docstring, "Audio"). Off, they follow the arousal of an independent trajectory of the
      same scene (the same kind of sound, no information about the labels).
    reaction_priors (default on; claim "SDD helps EXPR and VA"): on, reaction videos draw their target
      expressions from `EXPRESSION_PRIORS["reaction"]` (mostly happiness and surprise), other videos from
      `EXPRESSION_PRIORS["other"]`. Off, every video draws from the "other" priors: reaction videos keep their
      look (dark room, screen, cool cast) but not their own label distribution.
    reaction_mapping (default off; claim "SDD helps EXPR and VA"): on, reaction videos map the face to labels
      their own way: an expression the rules call Fear is labelled Surprise and one they call Surprise is
      labelled Fear (a startled viewer with lowered brows is surprised by the screen, a wide-eyed one without
      them afraid), and valence gains 0.5 AU25 + 0.5 AU26 + 0.3 AU2 inside the tanh (an open mouth and raised
      brows read as delight). AU labels and arousal keep the common mapping. A member trained on every video
      must learn the scene from its look to get these right; the reaction member sees only reaction videos.
      Off, every video uses the module docstring's mapping.
    person_styles (default off; claim "the ensemble helps"): on, each person's face shows their AU state
      through their own style: per AU a gain in [0.5, 1.5] and an offset in [-0.15, 0.15] (the face shows
      offset + gain * state, clipped to [0, 1], before the per-frame jitter), while the labels come from the
      state. Members trained on different folds then see different styles and disagree on the unseen people,
      which is what averaging members removes. Off, every face shows its state as it is. Member diversity
      also comes from training (initialisation, folds, dropout), which no switch of the data removes, so
      the ensemble may help in the control too.
    """

    temporal_context: bool = True
    audio_arousal: bool = True
    reaction_priors: bool = True
    reaction_mapping: bool = False
    person_styles: bool = False

    @classmethod
    def every(cls, on: bool) -> Premises:
        """Every premise on (the claims study's release) or every one off (its control)."""
        return cls(**{field.name: on for field in dataclasses.fields(cls)})

    def changes(self) -> dict[str, bool]:
        """The switches that differ from the default generator's, {name: value}."""
        default = Premises()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named synthetic release: `generate`'s sizes and premises."""

    num_videos: int
    frames_per_video: int
    num_test_videos: int
    premises: Premises


# The claims study (configs/abaw.py:claims): many short videos, so that a bootstrap over videos can decide a claim.
# 64 annotated videos (16 of them pairs: 80 tracks, 12-27 per task in Validation_Set for seeds 0-4, about half of
# them reaction videos) and 16 test videos (20 tracks; 15-20 per task for seeds 0-4 after the task gaps, at least
# 12 as tests/test_synthetic_claims.py checks), 90 frames (3 s) each: 7,200 frames, about the default release's.
PRESETS = {
    "default": Preset(num_videos=16, frames_per_video=300, num_test_videos=2, premises=Premises()),
    "claims": Preset(num_videos=64, frames_per_video=90, num_test_videos=16, premises=Premises.every(True)),
    "claims_control": Preset(num_videos=64, frames_per_video=90, num_test_videos=16, premises=Premises.every(False)),
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """Per-person appearance. Colours are BGR in [0, 1]."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    face_length: float  # face half-height in face widths
    eye_spacing: float


@dataclasses.dataclass(frozen=True)
class Person:
    """One annotated person: an annotation name, its labels and its rendering inputs."""

    name: str
    split: str
    tasks: tuple[str, ...]
    identity: Identity
    intensity: np.ndarray  # (T, 12) smooth AU state
    au: np.ndarray  # (T, 12) int, -1 rows invalid
    expr: np.ndarray  # (T,) int, -1 invalid
    va: np.ndarray  # (T, 2) float, -5 invalid
    has_crop: np.ndarray  # (T,) bool
    face: np.ndarray  # (T, 12) the AU state the face shows before the per-frame jitter (Premises.person_styles)


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """One source video (mp4) with one person or a `_left`/`_right` pair."""

    index: int
    video: str
    scene: str
    num_frames: int
    is_test: bool
    people: tuple[Person, ...]


@dataclasses.dataclass(frozen=True)
class GenerationSummary:
    """What `generate` wrote: source videos, annotated and test names, reaction videos and counts."""

    out_dir: pathlib.Path
    seed: int
    videos: tuple[str, ...]
    annotation_names: tuple[str, ...]
    test_names: tuple[str, ...]
    reaction_videos: tuple[str, ...]
    num_frames: int
    num_crops: int
    seconds: float


def expression_from_aus(active: np.ndarray, *, reaction: bool = False) -> np.ndarray:
    """Expression class per frame from boolean AU activations (..., 12), by the module's rules; `reaction`: by
    the reaction videos' own mapping (`Premises.reaction_mapping`: Fear and Surprise trade places)."""
    a = {name: active[..., i] for name, i in _AU_INDEX.items()}
    rules = (
        (4, a["AU6"] & a["AU12"]),
        (3, a["AU1"] & a["AU2"] & a["AU4"] & a["AU25"]),
        (6, a["AU1"] & a["AU2"] & (a["AU25"] | a["AU26"]) & ~a["AU4"]),
        (5, a["AU1"] & a["AU4"] & a["AU15"]),
        (1, a["AU4"] & a["AU7"] & (a["AU23"] | a["AU24"])),
        (2, a["AU10"]),
        (0, ~active.any(axis=-1)),
    )
    expr = np.full(active.shape[:-1], 7, np.int64)
    for label, hit in reversed(rules):
        expr = np.where(hit, label, expr)
    return _REACTION_EXPRESSIONS[expr] if reaction else expr


def valence_arousal_from_aus(intensity: np.ndarray, *, reaction: bool = False) -> np.ndarray:
    """Noise-free (valence, arousal) per frame from AU intensities (..., 12) in [0, 1]; `reaction`: by the
    reaction videos' own mapping (`Premises.reaction_mapping`: valence gains 0.5 AU25 + 0.5 AU26 + 0.3 AU2)."""
    s = {name: intensity[..., i] for name, i in _AU_INDEX.items()}
    valence = (
        0.55 * s["AU12"]
        + 0.35 * s["AU6"]
        - 0.45 * s["AU15"]
        - 0.35 * s["AU4"]
        - 0.30 * s["AU10"]
        - 0.15 * s["AU23"]
        - 0.15 * s["AU24"]
        + 0.05
    )
    if reaction:
        valence = valence + 0.5 * s["AU25"] + 0.5 * s["AU26"] + 0.3 * s["AU2"]
    arousal = (
        0.30 * s["AU1"]
        + 0.30 * s["AU2"]
        + 0.25 * s["AU4"]
        + 0.20 * s["AU7"]
        + 0.15 * s["AU6"]
        + 0.25 * s["AU25"]
        + 0.45 * s["AU26"]
        - 0.45
    )
    return np.tanh(1.6 * np.stack([valence, arousal], axis=-1))


def sample_au_trajectory(rng: np.random.Generator, num_frames: int, scene: str) -> np.ndarray:
    """Smooth AU intensities (num_frames, 12) moving between expression targets of `scene`."""
    priors = np.asarray(EXPRESSION_PRIORS[scene])
    targets = np.empty((num_frames, len(tasks.AU.label_names)))
    start = 0
    while start < num_frames:
        length = int(rng.integers(24, 97))
        expression = tasks.EXPR.label_names[rng.choice(len(priors), p=priors / priors.sum())]
        targets[start : start + length] = _target_aus(rng, expression)
        start += length
    smooth = ndimage.gaussian_filter1d(targets, _SMOOTH_SIGMA, axis=0, mode="nearest")
    drift = ndimage.gaussian_filter1d(rng.normal(size=targets.shape), _DRIFT_SIGMA, axis=0, mode="nearest")
    drift *= _DRIFT_STD / max(drift.std(), 1e-8)
    return np.clip(smooth + drift, 0.0, 1.0)


def _target_aus(rng: np.random.Generator, expression: str) -> np.ndarray:
    if expression == "Other":
        on = list(rng.choice(_OTHER_AUS, size=int(rng.integers(1, 3)), replace=False))
    else:
        always, optional = _EXPRESSION_AUS[expression]
        on = list(always) + [au for au, p in optional if rng.random() < p]
    target = rng.uniform(0.0, 0.2, len(tasks.AU.label_names))
    for au in on:
        target[_AU_INDEX[au]] = rng.uniform(0.7, 1.0)
    return target


def sample_identity(rng: np.random.Generator) -> Identity:
    tone = rng.uniform(0.55, 1.1)
    skin = np.clip(np.array([0.55, 0.66, 0.86]) * tone + rng.normal(0, 0.02, 3), 0.05, 1.0)
    # Hair stays clearly darker than skin: the cascade keys on a dark frame around a lighter face.
    hair = np.clip(np.array([0.10, 0.12, 0.16]) * rng.uniform(0.5, 2.5) + rng.normal(0, 0.02, 3), 0.02, 0.6)
    hair = np.minimum(hair, 0.5 * skin)
    return Identity(
        skin=tuple(float(c) for c in skin),
        hair=tuple(float(c) for c in hair),
        face_length=float(rng.uniform(0.55, 0.65)),
        eye_spacing=float(rng.uniform(0.17, 0.21)),
    )


def render_face(
    canvas: np.ndarray,
    center: tuple[float, float],
    width: float,
    intensity: np.ndarray,
    identity: Identity,
    tint: np.ndarray,
    roll: float = 0.0,
) -> np.ndarray:
    """Draws a face of `width` pixels centred at `center` (x, y), turned `roll` degrees clockwise in the image, on a
    float BGR canvas, in place; returns its five landmarks (x, y pixels; left eye, right eye, nose tip, left and
    right mouth corner, as seen in the image)."""
    s = {name: float(np.clip(intensity[i], 0.0, 1.0)) for name, i in _AU_INDEX.items()}
    cx, cy = center
    shift, aa = 4, cv2.LINE_AA
    scale = 1 << shift
    cos, sin = np.cos(np.radians(roll)), np.sin(np.radians(roll))

    def at(x, y):
        return cx + (x * cos - y * sin) * width, cy + (x * sin + y * cos) * width

    def pt(x, y):
        px_, py_ = at(x, y)
        return (int(round(px_ * scale)), int(round(py_ * scale)))

    def ax(a, b):
        return (int(round(a * width * scale)), int(round(b * width * scale)))

    def px(v):
        return max(1, int(round(v * width)))

    def col(c, f=1.0):
        return tuple(float(min(1.0, v * f * t)) for v, t in zip(c, tint))

    def ellipse(x, y, a, b, colour, start=0, end=360):
        cv2.ellipse(canvas, pt(x, y), ax(a, b), roll, start, end, colour, -1, aa, shift)

    skin, hair = identity.skin, identity.hair
    # Clothing colour from the identity, not a new random draw: every other draw of the seed stays where it was.
    cloth = tuple(float(0.25 + 0.5 * c) for c in (hair[2] * 2, skin[0], hair[0] * 3))
    jaw = 0.10 * s["AU26"]
    half_len = identity.face_length
    # Shoulders and neck: a head on a body is what a face detector trained on photographs expects.
    ellipse(0, 1.45, 1.05, 0.55, col(cloth))
    cv2.fillPoly(
        canvas,
        [np.array([pt(-0.2, 0.3), pt(0.2, 0.3), pt(0.22, 1.0), pt(-0.22, 1.0)], np.int32)],
        col(skin, 0.78),
        aa,
        shift,
    )
    ellipse(0, -0.12, 0.55, half_len + 0.08, col(hair))
    for sx in (-1, 1):
        ellipse(sx * 0.45, 0.0, 0.07, 0.12, col(skin, 0.85))
    # Shaded skin: darker towards the outline, as light falls on a rounded face.
    for f, shade in ((1.0, 0.7), (0.94, 0.8), (0.86, 0.9), (0.74, 0.98), (0.6, 1.04)):
        ellipse(0, 0.02 + jaw / 2, 0.46 * f, (half_len + jaw / 2) * (0.4 + 0.6 * f), col(skin, shade))
    ellipse(0, 0.08 - half_len, 0.47, 0.17, col(hair), 180, 360)
    cheek_up = 0.06 * s["AU6"]
    for sx in (-1, 1):
        ellipse(sx * 0.24, 0.16 - cheek_up, 0.12 + 0.03 * s["AU6"], 0.09, col(skin, 1.06))
    squint = 0.5 * s["AU6"] + 0.6 * s["AU7"]
    widen = 0.5 * max(s["AU1"], s["AU2"])
    lid = max(0.012, 0.042 * (1 + widen - 0.8 * squint))
    inner_up = 0.07 * s["AU1"] - 0.05 * s["AU4"]
    outer_up = 0.07 * s["AU2"] - 0.02 * s["AU4"]
    pull = 0.03 * s["AU4"]
    for sx in (-1, 1):
        ex = sx * identity.eye_spacing
        ellipse(ex, -0.12, 0.13, 0.085, col(skin, 0.72))
        # A near-white sclera reads as a cartoon eye to CenterFace (mean neutral-face score 0.66, 0.73 with this).
        ellipse(ex, -0.10, 0.07, lid, col(tuple(0.45 * c + 0.22 for c in skin)))
        iris = int(round(min(0.033, lid) * width * scale))
        cv2.circle(canvas, pt(ex, -0.10), iris, col((0.18, 0.22, 0.28)), -1, aa, shift)
        cv2.circle(canvas, pt(ex, -0.10), max(1, iris // 2), col((0.03, 0.03, 0.03)), -1, aa, shift)
        upper_lid = np.array(
            [pt(ex + sx * 0.075 * x, -0.10 - lid * (1 - x * x) ** 0.5) for x in np.linspace(-1, 1, 7)], np.int32
        )
        cv2.polylines(canvas, [upper_lid], False, col((0.08, 0.07, 0.07)), px(0.012), aa, shift)
        brow = np.array(
            [
                pt(sx * (0.07 + pull), -0.22 - inner_up),
                pt(ex, -0.26 - 0.5 * (inner_up + outer_up)),
                pt(sx * 0.31, -0.22 - outer_up),
            ],
            np.int32,
        )
        cv2.polylines(canvas, [brow], False, col(hair, 0.6), px(0.04), aa, shift)
        if s["AU10"] > 0.05:
            cv2.line(
                canvas, pt(sx * 0.10, 0.14), pt(sx * 0.18, 0.30), col(skin, 1 - 0.3 * s["AU10"]), px(0.02), aa, shift
            )
    # Nose: a lit bridge, shaded sides, a rounded tip and two nostrils.
    cv2.line(canvas, pt(0, -0.06), pt(0, 0.07), col(skin, 1.1), px(0.035), aa, shift)
    for sx in (-1, 1):
        cv2.line(canvas, pt(sx * 0.045, -0.04), pt(sx * 0.06, 0.09), col(skin, 0.85), px(0.02), aa, shift)
    ellipse(0, 0.10, 0.065, 0.04, col(skin, 1.07))
    for sx in (-1, 1):
        ellipse(sx * 0.035, 0.135, 0.022, 0.011, col(skin, 0.4))
    mouth = _render_mouth(canvas, s, jaw, pt, px, col, skin)
    points = [(-identity.eye_spacing, -0.10), (identity.eye_spacing, -0.10), (0.0, 0.10), *mouth]
    return np.array([at(x, y) for x, y in points])


def _render_mouth(canvas, s, jaw, pt, px, col, skin) -> list[tuple[float, float]]:
    """Draws the lips; returns the two mouth corners in face coordinates."""
    shift, aa = 4, cv2.LINE_AA
    my = 0.30 + jaw / 2
    corner_up = 0.07 * s["AU12"] - 0.07 * s["AU15"]
    half = 0.16 + 0.04 * s["AU12"] - 0.04 * s["AU23"] - 0.02 * s["AU24"]
    lip = 0.035 * (1 - 0.6 * s["AU23"]) * (1 - 0.5 * s["AU24"])
    upper = -0.04 * s["AU10"]
    gap = 0.07 * s["AU25"] + 0.16 * s["AU26"]
    lip_colour = col((skin[0] * 0.5, skin[1] * 0.5, skin[2] * 0.9))
    xs = np.linspace(-1.0, 1.0, 9)
    top = [pt(x * half, my + upper - gap / 2 - lip - corner_up * x * x) for x in xs]
    bottom = [pt(x * half, my + gap / 2 + lip - corner_up * x * x + 0.02 * (1 - x * x)) for x in xs[::-1]]
    cv2.fillPoly(canvas, [np.array(top + bottom, np.int32)], lip_colour, aa, shift)
    if gap > 0.01:
        inner_top = [pt(x * half * 0.85, my + upper / 2 - gap / 2 - corner_up * x * x) for x in xs]
        inner_bottom = [pt(x * half * 0.85, my + gap / 2 - corner_up * x * x) for x in xs[::-1]]
        cv2.fillPoly(canvas, [np.array(inner_top + inner_bottom, np.int32)], col((0.18, 0.12, 0.22)), aa, shift)
        teeth = [pt(x * half * 0.85, my + upper / 2 - gap / 2 - corner_up * x * x + 0.35 * gap) for x in xs[::-1]]
        cv2.fillPoly(canvas, [np.array(inner_top + teeth, np.int32)], col((0.75, 0.78, 0.8)), aa, shift)
    else:
        line = np.array([pt(x * half, my - corner_up * x * x) for x in xs], np.int32)
        cv2.polylines(canvas, [line], False, col(skin, 0.4), px(0.014), aa, shift)
    corner_y = my + upper / 2 - corner_up
    return [(-half, corner_y), (half, corner_y)]


def render_occluder(canvas: np.ndarray, center: tuple[float, float], width: float, rng: np.random.Generator) -> None:
    """An object in front of the face (a raised phone or cup) that hides the eyes and nose."""
    cx, cy = center
    colour = tuple(float(c) for c in rng.uniform(0.15, 0.45, 3))
    x0, y0 = int(cx - 0.45 * width), int(cy - 0.25 * width)
    cv2.rectangle(canvas, (x0, y0), (int(cx + 0.45 * width), int(cy + 0.35 * width)), colour, -1)


def scene_background(rng: np.random.Generator, scene: str, height: int, width: int) -> np.ndarray:
    """A static float BGR background for one video."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    cols = np.linspace(0.0, 1.0, width)[None, :, None]
    if scene == "reaction":
        base = np.array([0.16, 0.09, 0.05]) * rng.uniform(0.7, 1.2)
        glow_x = rng.uniform(0.2, 0.8)
        glow = np.exp(-((cols - glow_x) ** 2) / 0.08 - (rows - 0.3) ** 2 / 0.2)
        img = base + glow * np.array([0.28, 0.16, 0.08])
        sx, sw = int(rng.uniform(0.05, 0.6) * width), int(rng.uniform(0.2, 0.35) * width)
        sy, sh = int(rng.uniform(0.05, 0.2) * height), int(rng.uniform(0.2, 0.3) * height)
        screen = np.array([0.85, 0.72, 0.55]) * rng.uniform(0.7, 1.0)
        img = np.broadcast_to(img, (height, width, 3)).copy()
        img[sy : sy + sh, sx : sx + sw] = screen
    else:
        wall = np.array([0.45, 0.62, 0.78]) * rng.uniform(0.8, 1.15) + rng.normal(0, 0.04, 3)
        img = np.broadcast_to(wall * (0.85 + 0.25 * rows), (height, width, 3)).copy()
        period = int(rng.integers(12, 30))
        stripes = (np.arange(width) // period) % 2 == 0
        img[:, stripes] *= rng.uniform(0.88, 0.96)
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.uniform(0, 0.9) * width), int(rng.uniform(0.3, 0.9) * height)
            w, h = int(rng.uniform(0.1, 0.3) * width), int(rng.uniform(0.1, 0.4) * height)
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.2, 0.8, 3) * np.array([0.8, 0.95, 1.1])
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def synthesize_audio(arousal: np.ndarray, fps: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 audio whose pitch and loudness follow per-frame arousal in [-1, 1]."""
    num_samples = int(round(len(arousal) * sample_rate / fps))
    t = np.arange(num_samples) / sample_rate
    level = (np.interp(t * fps, np.arange(len(arousal)), arousal) + 1.0) / 2.0
    f0 = 110.0 + 140.0 * level
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(h * phase) / h for h in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 2 * np.pi)) ** 2
    loudness = 0.02 + 0.3 * level**1.5
    audio = loudness * envelope * voice / 2.3 + rng.normal(0, 0.004, num_samples)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _smooth_walk(rng: np.random.Generator, num_frames: int, sigma: float, std: float) -> np.ndarray:
    walk = ndimage.gaussian_filter1d(rng.normal(size=num_frames), sigma, mode="nearest")
    return walk * std / max(walk.std(), 1e-8)


def _missing_crops(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    has_crop = np.ones(num_frames, bool)
    for _ in range(max(1, num_frames // 150)):
        start = int(rng.integers(0, num_frames))
        has_crop[start : start + int(rng.integers(3, 9))] = False
    tail = int(rng.integers(0, 5))
    if tail:
        has_crop[-tail:] = False
    return has_crop


def _invalid_run(rng: np.random.Generator, num_frames: int) -> slice:
    length = int(rng.integers(max(1, num_frames // 50), max(2, num_frames // 15)))
    start = int(rng.integers(0, num_frames - length))
    return slice(start, start + length)


def _label_scene(scene: str, premises: Premises) -> str:
    """The scene whose expression priors a video of `scene` draws from."""
    return scene if premises.reaction_priors else "other"


def _make_person(
    rng: np.random.Generator,
    name: str,
    split: str,
    task_names: tuple[str, ...],
    scene: str,
    num_frames: int,
    premises: Premises,
    shuffle_rng: np.random.Generator,
    style_rng: np.random.Generator,
) -> Person:
    """One person. The premises' draws come from their own streams (`shuffle_rng` for temporal_context off,
    `style_rng` for person_styles), so the draws of `rng` (all the default generator draws) stay where they are."""
    intensity = sample_au_trajectory(rng, num_frames, _label_scene(scene, premises))
    if not premises.temporal_context:
        intensity = intensity[shuffle_rng.permutation(num_frames)]
    reaction = premises.reaction_mapping and scene == "reaction"
    active = intensity > _ACTIVE_THRESHOLD
    au = active.astype(np.int64)
    expr = expression_from_aus(active, reaction=reaction)
    va = np.clip(
        valence_arousal_from_aus(intensity, reaction=reaction) + rng.normal(0, _VA_NOISE, (num_frames, 2)), -1, 1
    )
    face = intensity
    if premises.person_styles:
        gain = style_rng.uniform(0.5, 1.5, intensity.shape[1])
        offset = style_rng.uniform(-0.15, 0.15, intensity.shape[1])
        face = np.clip(offset + gain * intensity, 0.0, 1.0)
    au[_invalid_run(rng, num_frames)] = -1
    expr[_invalid_run(rng, num_frames)] = -1
    va[_invalid_run(rng, num_frames)] = -5.0
    return Person(
        name=name,
        split=split,
        tasks=task_names,
        identity=sample_identity(rng),
        intensity=intensity,
        au=au,
        expr=expr,
        va=va,
        has_crop=_missing_crops(rng, num_frames),
        face=face,
    )


def plan_videos(
    num_videos: int,
    frames_per_video: int,
    num_test_videos: int,
    seed: int,
    frame_size: tuple[int, int],
    premises: Premises = Premises(),
) -> list[VideoSpec]:
    """All labels and rendering inputs, deterministic from `seed` (and `premises`)."""
    width, height = frame_size
    specs = []
    for i in range(num_videos + num_test_videos):
        rng = np.random.default_rng([seed, i])
        shuffle_rng, style_rng = np.random.default_rng([seed, i, 2]), np.random.default_rng([seed, i, 4])
        video = f"{i + 1}-30-{width}x{height}" if i % 2 == 0 else str(100 + i)
        scene = SCENES[int(rng.random() < 0.5)]
        if i < 2:
            scene = SCENES[i]  # both scene types exist in every dataset
        num_frames = int(round(frames_per_video * rng.uniform(0.8, 1.2)))
        is_test = i >= num_videos
        split = "Validation_Set" if rng.random() < 0.25 else "Train_Set"
        names = [video + s for s in affwild2.PAIR_SUFFIXES] if i % 4 == 2 else [video]
        people = []
        for name in names:
            gap = rng.random()
            person_tasks = tuple(
                t for t in tasks.TASK_NAMES if not (t == "AU" and gap < 0.2) and not (t == "VA" and gap > 0.8)
            )
            people.append(
                _make_person(rng, name, split, person_tasks, scene, num_frames, premises, shuffle_rng, style_rng)
            )
        specs.append(
            VideoSpec(index=i, video=video, scene=scene, num_frames=num_frames, is_test=is_test, people=tuple(people))
        )
    return specs


def _annotation_text(task: str, person: Person) -> str:
    if task == "AU":
        rows = [",".join(str(v) for v in row) for row in person.au]
    elif task == "EXPR":
        rows = [str(v) for v in person.expr]
    else:
        rows = ["-5,-5" if row[0] == -5 else f"{row[0]:.4f},{row[1]:.4f}" for row in person.va]
    return "\n".join([tasks.TASKS[task].header] + rows) + "\n"


def _layout(num_people: int, width: int, height: int) -> list[tuple[float, float, float]]:
    """(centre x, centre y, face width) per person; a pair sits side by side.

    Faces are about a quarter of the frame height wide: CenterFace finds these drawn faces most surely at 40-65 px
    (its score falls for larger ones, which show how little detail a drawing has)."""
    if num_people == 1:
        return [(0.5 * width, 0.45 * height, 0.26 * height)]
    return [(0.26 * width, 0.45 * height, 0.235 * height), (0.74 * width, 0.45 * height, 0.235 * height)]


def render_video(
    spec: VideoSpec,
    out_dir: pathlib.Path,
    seed: int,
    frame_size: tuple[int, int],
    crop_size: int,
    jpeg_quality: int,
    premises: Premises = Premises(),
) -> tuple[int, dict[str, np.ndarray]]:
    """Writes the mp4 and the crops of one video; returns the number of crops written and each person's drawn
    landmarks by annotation name, (frames, 5, 2) pixels."""
    width, height = frame_size
    rng = np.random.default_rng([seed, spec.index, 1])
    background = scene_background(rng, spec.scene, height, width)
    tint = np.array([1.12, 1.0, 0.85]) if spec.scene == "reaction" else np.array([0.95, 1.0, 1.05])
    n = spec.num_frames
    slots = _layout(len(spec.people), width, height)
    motion = [
        (
            _smooth_walk(rng, n, 15, 0.04 * w),
            _smooth_walk(rng, n, 15, 0.03 * w),
            1.0 + _smooth_walk(rng, n, 25, 0.04),
            _smooth_walk(rng, n, 30, _ROLL_STD),
        )
        for (_, _, w) in slots
    ]
    jitter = [p.face + rng.normal(0, _RENDER_JITTER, p.face.shape) for p in spec.people]
    landmarks = np.zeros((len(spec.people), n, 5, 2), np.float32)
    crop_dirs = []
    for person in spec.people:
        d = out_dir / "cropped_aligned" / person.name
        d.mkdir(parents=True, exist_ok=True)
        crop_dirs.append(d)
    arousal = np.mean([valence_arousal_from_aus(p.intensity)[:, 1] for p in spec.people], axis=0)
    if not premises.audio_arousal:
        arousal = audio_arousal_control(seed, spec, premises)
    audio = synthesize_audio(arousal, _FPS, _SAMPLE_RATE, rng)
    noise_bank = rng.normal(0, _NOISE_STD / 255, (height + 16, width + 16, 3)).astype(np.float32)
    container = av.open(str(out_dir / "videos" / f"{spec.video}.mp4"), "w")
    try:
        vstream = container.add_stream("mpeg4", rate=_FPS)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.bit_rate = 1_000_000
        astream = container.add_stream("aac", rate=_SAMPLE_RATE)
        astream.layout = "mono"
        num_crops = 0
        for k in range(n):
            canvas = background.copy()
            for j, person in enumerate(spec.people):
                x0, y0, w0 = slots[j]
                dx, dy, zoom, roll = (walk[k] for walk in motion[j])
                center, face_w = (x0 + dx, y0 + dy), w0 * zoom
                landmarks[j, k] = render_face(canvas, center, face_w, jitter[j][k], person.identity, tint, roll)
                if not person.has_crop[k]:
                    render_occluder(canvas, center, face_w, rng)
            canvas = cv2.GaussianBlur(canvas, (0, 0), _BLUR_SIGMA)
            oy, ox = rng.integers(0, 16, 2)
            canvas += noise_bank[oy : oy + height, ox : ox + width]
            frame = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
            for j, person in enumerate(spec.people):
                if person.has_crop[k]:
                    crop = align.align_face(frame, landmarks[j, k], crop_size)
                    _, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                    (crop_dirs[j] / f"{k + 1:05d}.jpg").write_bytes(data.tobytes())
                    num_crops += 1
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        chunk = 1024
        for start in range(0, len(audio), chunk):
            aframe = av.AudioFrame.from_ndarray(audio[None, start : start + chunk], format="fltp", layout="mono")
            aframe.sample_rate, aframe.pts = _SAMPLE_RATE, start
            for packet in astream.encode(aframe):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    finally:
        container.close()
    return num_crops, {person.name: landmarks[j] for j, person in enumerate(spec.people)}


def audio_arousal_control(seed: int, spec: VideoSpec, premises: Premises) -> np.ndarray:
    """The arousal the audio follows when `premises.audio_arousal` is off: that of an independent trajectory of the
    video's scene, one per person, averaged as a pair's real arousal is."""
    trajectories = [
        sample_au_trajectory(
            np.random.default_rng([seed, spec.index, 3, j]), spec.num_frames, _label_scene(spec.scene, premises)
        )
        for j in range(len(spec.people))
    ]
    return np.mean([valence_arousal_from_aus(t)[:, 1] for t in trajectories], axis=0)


def _write_annotations(specs: Sequence[VideoSpec], out_dir: pathlib.Path) -> list[str]:
    names = []
    for spec in specs:
        for person in spec.people:
            for task in person.tasks:
                if spec.is_test:
                    folder = out_dir / "test_set" / "ground_truth" / tasks.TASKS[task].folders[0]
                else:
                    folder = out_dir / "annotations" / tasks.TASKS[task].folders[0] / person.split
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{person.name}.txt").write_text(_annotation_text(task, person))
            if not spec.is_test:
                names.append(person.name)
    return names


def _write_test_set(specs: Sequence[VideoSpec], out_dir: pathlib.Path) -> list[str]:
    """Per-task test lists and example submissions listing every frame of every test video."""
    lists_dir = out_dir / "test_set" / "names_of_videos_in_each_test_set"
    examples_dir = out_dir / "test_set" / "prediction_files_format"
    lists_dir.mkdir(parents=True, exist_ok=True)
    examples_dir.mkdir(parents=True, exist_ok=True)
    placeholder = {"AU": ",".join(["0"] * len(tasks.AU.label_names)), "EXPR": "0", "VA": "0.0,0.0"}
    test_names = []
    for task in tasks.TASK_NAMES:
        people = [(spec, p) for spec in specs if spec.is_test for p in spec.people if task in p.tasks]
        (lists_dir / tasks.TASKS[task].test_list_file).write_text("".join(f"{p.name}\n" for _, p in people))
        rows = [tasks.TASKS[task].submission_header]
        rows += [
            f"{p.name}/{k:05d}.jpg,{placeholder[task]}" for spec, p in people for k in range(1, spec.num_frames + 1)
        ]
        (examples_dir / tasks.TASKS[task].example_file).write_text("\n".join(rows) + "\n")
        test_names += [p.name for _, p in people if p.name not in test_names]
    return test_names


def _write_metadata(specs: Sequence[VideoSpec], out_dir: pathlib.Path, arguments: dict, premises: Premises) -> None:
    videos = [
        {
            "video": s.video,
            "scene": s.scene,
            "num_frames": s.num_frames,
            "test": s.is_test,
            "people": [
                {"name": p.name, "split": p.split, "tasks": list(p.tasks), "num_crops": int(p.has_crop.sum())}
                for p in s.people
            ],
        }
        for s in specs
    ]
    (out_dir / "generation.json").write_text(
        json.dumps({"arguments": arguments, "fps": _FPS, "audio_sample_rate": _SAMPLE_RATE, "videos": videos}, indent=1)
        + "\n"
    )
    # The default release's README is the module docstring alone (its bytes stay as they were); one with other
    # premises adds what each switch does.
    rules = __doc__.strip() + (f"\n\nPremises.\n{Premises.__doc__}" if premises.changes() else "")
    (out_dir / "README.md").write_text(
        "# Synthetic Aff-Wild2\n\nGenerated by `abaw_jax.data.synthetic.generate` with "
        f"`{json.dumps(arguments)}`.\n\n```\n{rules}\n```\n"
    )


def generate(
    out_dir: str | pathlib.Path,
    *,
    num_videos: int = 16,
    frames_per_video: int = 300,
    seed: int = 0,
    num_test_videos: int = 2,
    frame_size: tuple[int, int] = (320, 240),
    crop_size: int = 112,
    jpeg_quality: int = 90,
    premises: Premises = Premises(),
) -> GenerationSummary:
    """Writes a synthetic Aff-Wild2 release to `out_dir` (see the module docstring for the rules).

    Args:
      out_dir: output folder; created if missing. Existing files of the same names are overwritten.
      num_videos: annotated source videos (every fourth holds a `_left`/`_right` pair).
      frames_per_video: mean frames per video; each video draws 0.8-1.2 times this.
      seed: everything is a deterministic function of the seed and the other arguments.
      num_test_videos: extra videos without public labels, listed in `test_set/`.
      frame_size: (width, height) of the raw videos.
      crop_size: side of the square `cropped_aligned` JPEGs.
      jpeg_quality: JPEG quality of the crops.
      premises: which of the paper's claims' premises are built in (`Premises`; `PRESETS` names the claims
        study's releases, `preset_arguments`).

    Returns:
      A summary with the names written and counts.
    """
    if num_videos < 2 or frames_per_video < 60 or num_test_videos < 0:
        raise ValueError(
            "need num_videos >= 2 (one per scene type), frames_per_video >= 60 and "
            f"num_test_videos >= 0; got {num_videos}, {frames_per_video}, {num_test_videos}"
        )
    start = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    specs = plan_videos(num_videos, frames_per_video, num_test_videos, seed, frame_size, premises)
    annotation_names = _write_annotations(specs, out_dir)
    test_names = _write_test_set(specs, out_dir)
    reaction = [s.video for s in specs if s.scene == "reaction"]
    (out_dir / "reaction_videos.txt").write_text("".join(f"{v}\n" for v in reaction))
    arguments = dict(
        num_videos=num_videos,
        frames_per_video=frames_per_video,
        seed=seed,
        num_test_videos=num_test_videos,
        frame_size=list(frame_size),
        crop_size=crop_size,
        jpeg_quality=jpeg_quality,
    )
    if premises.changes():
        arguments["premises"] = dataclasses.asdict(premises)
    _write_metadata(specs, out_dir, arguments, premises)
    num_crops, landmarks = 0, {}
    for i, spec in enumerate(specs):
        crops, drawn = render_video(spec, out_dir, seed, frame_size, crop_size, jpeg_quality, premises)
        num_crops += crops
        landmarks.update(drawn)
        logging.info(
            "synthetic Aff-Wild2: video %d/%d (%s, %s, %d frames), %d crops so far, %.1f s",
            i + 1,
            len(specs),
            spec.video,
            spec.scene,
            spec.num_frames,
            num_crops,
            time.perf_counter() - start,
        )
    np.savez_compressed(out_dir / LANDMARKS_FILE, **landmarks)
    return GenerationSummary(
        out_dir=out_dir,
        seed=seed,
        videos=tuple(s.video for s in specs),
        annotation_names=tuple(annotation_names),
        test_names=tuple(test_names),
        reaction_videos=tuple(reaction),
        num_frames=sum(s.num_frames for s in specs),
        num_crops=num_crops,
        seconds=time.perf_counter() - start,
    )


def preset_arguments(name: str) -> dict:
    """`generate`'s keyword arguments of the release `PRESETS[name]` (all but `out_dir` and `seed`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic release preset {name!r}; the presets are {sorted(PRESETS)}")
    return {field.name: getattr(PRESETS[name], field.name) for field in dataclasses.fields(Preset)}
