"""Synthetic mini-releases of AffectNet, RAF-DB and BP4D in their official layouts, deterministic from a seed.

`generate(out_dir)` writes `affectnet/`, `rafdb/` and `bp4d/` (layouts: `data.affectnet`, `data.rafdb`,
`data.bp4d`), for the reader tests and the tiny fine-tuning presets:

  affectnet/Manually_Annotated_file_lists/{training,validation}.csv
  affectnet/Manually_Annotated/Manually_Annotated_Images/<n>/<hex>.jpg    whole pictures
  affectnet/crops/<n>/<hex>.jpg                  `affectnet.prepare_crops` of them (aligned, 112 px)
  rafdb/basic/EmoLabel/list_patition_label.txt, Image/original/, Image/aligned/ (100 px),
        Annotation/manual/<stem>_manu_attri.txt
  bp4d/AUCoding/AU_OCC/<subject>_<task>.csv      original header 0,1,...,99 (column N = AU N)
  bp4d/Sequences/<subject>/<task>/<frame:04d>.jpg   whole frames
  bp4d/crops/<subject>_<task>/<frame:05d>.jpg    what `bp4d.prepare_crops` writes with a detector that finds the
                                                 drawn face (aligned on the drawn landmarks, 112 px)

Faces are drawn by `data.synthetic` (its renderer, identities, backgrounds and AU-to-label rules), so the labels
are visible in the pixels: each picture's AU state is a frame of `synthetic.sample_au_trajectory`, its EXPR
class and valence / arousal follow `synthetic.expression_from_aus` / `valence_arousal_from_aus`, and the source
codes come from those through `tasks.SOURCE_LABELS`. Still pictures are drawn class-balanced (each picture asks for
a class and takes a pool state of that class). AffectNet's "Other" pictures carry the dropped codes 7-9 and one
picture in twenty is a No-Face (background only, expression 10, valence and arousal -2); its landmarks are 68
points whose eye rings, nose tip and mouth corners are the drawn ones. A BP4D session holds a pool state of each
expression in turn for four frames (with a little frame-to-frame jitter), so every AU BP4D codes is on and off in
every fold; columns 25 and 26 hold 0 (BP4D does not code them: a reader must not read them), AU23 is 9 (not coded)
on one frame in twenty, and one frame per session has nothing coded. The cache keeps each mini-release under its
generator's version (`VERSIONS`).
"""

from __future__ import annotations

import logging
import os
import pathlib

import cv2
import numpy as np

from abaw_jax import tasks
from abaw_jax.data import affectnet, bp4d, rafdb, release, synthetic
from abaw_jax.media import align, faces
from abaw_jax.runtime import cache

SOURCES = ("affectnet", "rafdb", "bp4d")
# Where each mini-release keeps the crops its reader takes (None: RAF-DB's own Image/aligned).
CROPS = {"affectnet": "crops", "rafdb": None, "bp4d": "crops"}
# Raised when a generator changes what it draws: the cache folder is named by it, so an older mini-release in a
# cache is never read as the current one.
VERSIONS = {"affectnet": 1, "rafdb": 1, "bp4d": 2}
_COMPLETE = ".complete"
_POOL_FRAMES = 3000
_JPEG_QUALITY = 95
_NOISE_STD = 6.0 / 255
_BLUR_SIGMA = 0.8
# Subjects from each of the three fold parts, so every fold has training and test subjects.
BP4D_SUBJECTS = ("F001", "M007", "M011", "F003", "F007", "F015")
BP4D_TASKS = ("T1", "T6")
_BP4D_HOLD = 4  # frames a BP4D session holds each expression state
_BP4D_JITTER = 0.03  # frame-to-frame AU intensity noise around a held state


def _state_pool(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(AU intensities (P, 12), EXPR class (P,)) of frames of both scene types' trajectories."""
    intensity = np.concatenate([synthetic.sample_au_trajectory(rng, _POOL_FRAMES, s) for s in synthetic.SCENES])
    return intensity, synthetic.expression_from_aus(intensity > 0.5)


def _pick_state(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], wanted: int) -> np.ndarray:
    intensity, classes = pool
    candidates = np.flatnonzero(classes == wanted)
    if not len(candidates):
        candidates = np.arange(len(classes))
    return intensity[rng.choice(candidates)]


def _draw(rng: np.random.Generator, intensity: np.ndarray | None, width: int, height: int) -> tuple:
    """(uint8 BGR picture, five landmarks (5, 2) or None) of one face with AU state `intensity` (None: no face)."""
    canvas = synthetic.scene_background(rng, synthetic.SCENES[int(rng.integers(2))], height, width)
    points, face_width = None, 0.45 * min(width, height) * rng.uniform(0.9, 1.1)
    if intensity is not None:
        center = (width / 2 + rng.normal(0, 0.03 * width), 0.42 * height + rng.normal(0, 0.03 * height))
        identity = synthetic.sample_identity(rng)
        points = synthetic.render_face(canvas, center, face_width, intensity, identity, np.ones(3), rng.normal(0, 6))
    canvas = cv2.GaussianBlur(canvas, (0, 0), _BLUR_SIGMA) + rng.normal(0, _NOISE_STD, canvas.shape)
    return np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8), points


def _write_jpeg(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])


def landmarks68(points: np.ndarray) -> np.ndarray:
    """68 iBUG-ordered points (68, 2) around a face whose five alignment points are `points` (5, 2):
    `affectnet.five_points` of the result gives `points` back."""
    points = np.asarray(points, np.float64)
    (lx, ly), (rx, ry) = points[0], points[1]
    eye = np.hypot(rx - lx, ry - ly)
    right = np.array([rx - lx, ry - ly]) / eye  # the face's across direction
    down = np.array([-right[1], right[0]])
    centre = (points[0] + points[1]) / 2

    def at(x: float, y: float) -> np.ndarray:
        return centre + eye * (x * right + y * down)

    angles = np.linspace(np.pi, 0, 17)
    jaw = [at(1.1 * np.cos(a), 0.4 + 1.1 * np.sin(a)) for a in angles]
    brows = [at(x, -0.45 - 0.08 * np.sin(np.pi * (x + 1) / 0.8)) for x in np.linspace(-0.9, -0.1, 5)]
    brows += [at(x, -0.45 - 0.08 * np.sin(np.pi * (x - 0.1) / 0.8)) for x in np.linspace(0.1, 0.9, 5)]
    bridge = [at(0, y) for y in np.linspace(-0.3, 0.2, 4)]
    nostrils = [at(x, 0.55) for x in np.linspace(-0.2, 0.2, 5)]
    ring = [(0.18 * np.cos(a), 0.08 * np.sin(a)) for a in np.arange(6) * np.pi / 3]  # mean exactly zero
    eyes = [points[i] + eye * (dx * right + dy * down) for i in (0, 1) for dx, dy in ring]
    left, right_corner = points[3], points[4]
    mouth_centre, half = (left + right_corner) / 2, (right_corner - left) / 2
    outer = [
        mouth_centre + np.cos(a) * -half + 0.25 * np.sin(a) * eye * down for a in np.linspace(0, 2 * np.pi, 13)[:-1]
    ]
    inner = [
        mouth_centre + np.cos(a) * -0.8 * half + 0.1 * np.sin(a) * eye * down for a in np.linspace(0, 2 * np.pi, 9)[:-1]
    ]
    result = np.array(jaw + brows + bridge + nostrils + eyes + outer + inner)
    result[30], result[48], result[54] = points[2], left, right_corner
    return result


def generate_affectnet(
    out_dir: str | pathlib.Path,
    *,
    num_train: int = 160,
    num_validation: int = 48,
    seed: int = 0,
    image_size: int = 128,
    crop_size: int = align.DEFAULT_SIZE,
) -> pathlib.Path:
    """Writes a synthetic AffectNet release (lists, images, prepared crops) to `out_dir`; returns it."""
    out_dir = pathlib.Path(out_dir)
    rng = np.random.default_rng([seed, 21, 1])
    pool = _state_pool(rng)
    code_of = {i: c for c, i in tasks.get_source_labels("affectnet_expr").to_task.items() if i is not None}
    images_dir = out_dir / "Manually_Annotated" / affectnet.IMAGES_DIR
    lists_dir = out_dir / affectnet.LISTS_DIR
    lists_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for split, count in (("train", num_train), ("validation", num_validation)):
        rows = [",".join(affectnet.COLUMNS)]
        for _ in range(count):
            wanted = index % tasks.EXPR.num_outputs
            no_face = index % 20 == 19
            intensity = None if no_face else _pick_state(rng, pool, wanted)
            image, points = _draw(rng, intensity, image_size, image_size)
            name = f"{int(rng.integers(1, 1000))}/{rng.bytes(8).hex()}.jpg"
            _write_jpeg(images_dir / name, image)
            if no_face:
                marks, code, va = np.zeros((affectnet.NUM_LANDMARKS, 2)), 10, (-2.0, -2.0)
            else:
                marks = landmarks68(points)
                # "Other" has no AffectNet code: it becomes one of the dropped Contempt, None, Uncertain.
                code = code_of[wanted] if wanted in code_of else int(rng.integers(7, 10))
                va = synthetic.valence_arousal_from_aus(intensity) + rng.normal(0, 0.02, 2)
                va = tuple(np.clip(va, -1, 1))
            x0, y0 = marks.min(0) - 4
            x1, y1 = marks.max(0) + 4
            box = f"{int(x0)},{int(y0)},{int(x1 - x0)},{int(y1 - y0)}"
            landmark_text = ";".join(f"{v:.2f}" for v in marks.reshape(-1))
            rows.append(f"{name},{box},{landmark_text},{code},{va[0]:.6f},{va[1]:.6f}")
            index += 1
        (lists_dir / affectnet.LIST_FILES[split]).write_text("\n".join(rows) + "\n")
    affectnet.prepare_crops(out_dir, out_dir / "crops", size=crop_size)
    logging.info("synthetic AffectNet: %d images in %s", index, out_dir)
    return out_dir


def generate_rafdb(
    out_dir: str | pathlib.Path, *, num_train: int = 140, num_test: int = 42, seed: int = 0, image_size: int = 128
) -> pathlib.Path:
    """Writes a synthetic RAF-DB basic release to `out_dir/basic`; returns `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    basic = out_dir / "basic"
    rng = np.random.default_rng([seed, 21, 2])
    pool = _state_pool(rng)
    code_of = {i: c for c, i in tasks.get_source_labels("rafdb_expr").to_task.items()}
    rows = []
    for split, count, digits in (("train", num_train, 5), ("test", num_test, 4)):
        for k in range(count):
            wanted = k % len(code_of)  # RAF-DB has no "Other"
            intensity = _pick_state(rng, pool, wanted)
            image, points = _draw(rng, intensity, image_size, image_size)
            name = f"{split}_{k + 1:0{digits}d}.jpg"
            _write_jpeg(basic / rafdb.ORIGINAL_DIR / name, image)
            _write_jpeg(basic / rafdb.ALIGNED_DIR / rafdb.aligned_name(name), align.align_face(image, points, 100))
            marks = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in points)
            attributes = f"{int(rng.integers(0, 3))}\n{int(rng.integers(0, 3))}\n{int(rng.integers(0, 5))}\n"
            manual = basic / rafdb.MANUAL_DIR / f"{pathlib.Path(name).stem}_manu_attri.txt"
            manual.parent.mkdir(parents=True, exist_ok=True)
            manual.write_text(marks + attributes)
            rows.append(f"{name} {code_of[wanted]}")
    (basic / rafdb.LABEL_FILES[0]).parent.mkdir(parents=True, exist_ok=True)
    (basic / rafdb.LABEL_FILES[0]).write_text("\n".join(rows) + "\n")
    logging.info("synthetic RAF-DB: %d images in %s", len(rows), basic)
    return out_dir


def generate_bp4d(
    out_dir: str | pathlib.Path,
    *,
    frames_per_session: int = 30,
    seed: int = 0,
    frame_size: tuple[int, int] = (128, 160),
    crop_size: int = align.DEFAULT_SIZE,
) -> pathlib.Path:
    """Writes a synthetic BP4D release (occurrence files, frames, prepared crops) to `out_dir`; returns it."""
    out_dir = pathlib.Path(out_dir)
    width, height = frame_size
    mapping = tasks.get_source_labels("bp4d_au")
    occurrence_dir = out_dir / bp4d.OCCURRENCE_DIRS[0]
    occurrence_dir.mkdir(parents=True, exist_ok=True)
    pool = _state_pool(np.random.default_rng([seed, 21, 3]))
    classes = tasks.EXPR.num_outputs
    for s, subject in enumerate(BP4D_SUBJECTS):
        for t, task in enumerate(BP4D_TASKS):
            rng = np.random.default_rng([seed, 21, 3, s, t])
            # Class-balanced as the still pictures are: a session holds a pool state of each expression in turn for
            # a few frames. A natural trajectory of a short session shows the rarer AUs (AU7, AU10, AU23, AU24) in
            # a few sessions only, so a fold could test AUs it never shows, or train on a handful of positives.
            first = int(rng.integers(classes))
            held = [_pick_state(rng, pool, (first + k) % classes) for k in range(-(-frames_per_session // _BP4D_HOLD))]
            intensity = np.repeat(held, _BP4D_HOLD, axis=0)[:frames_per_session]
            intensity = np.clip(intensity + rng.normal(0, _BP4D_JITTER, intensity.shape), 0.0, 1.0)
            active = intensity > 0.5
            start = int(rng.integers(1, 400))
            rows = [",".join(str(c) for c in range(100))]
            for k in range(frames_per_session):
                frame = start + k
                values = np.full(100, bp4d.NOT_CODED, np.int64)
                values[0] = frame
                values[[25, 26]] = 0
                for au, index in mapping.to_task.items():
                    values[au] = int(active[k, index]) if index is not None else int(rng.random() < 0.3)
                if k % 20 == 7:
                    values[23] = bp4d.NOT_CODED
                if k == frames_per_session - 1:
                    values[1:] = bp4d.NOT_CODED
                rows.append(",".join(map(str, values)))
                image, points = _draw(rng, intensity[k], width, height)
                _write_jpeg(out_dir / "Sequences" / subject / task / f"{frame:04d}.jpg", image)
                decoded = cv2.imread(str(out_dir / "Sequences" / subject / task / f"{frame:04d}.jpg"))
                drawn = faces.Box(0, 0, width, height, landmarks=tuple(map(tuple, points)))
                crop = faces.face_crop(decoded, drawn, size=crop_size)
                _write_jpeg(bp4d.crop_path(out_dir / "crops", f"{subject}_{task}", frame), crop)
            (occurrence_dir / f"{subject}_{task}.csv").write_text("\n".join(rows) + "\n")
    logging.info("synthetic BP4D: %d sessions in %s", len(BP4D_SUBJECTS) * len(BP4D_TASKS), out_dir)
    return out_dir


def generate(out_dir: str | pathlib.Path, *, seed: int = 0) -> dict[str, pathlib.Path]:
    """All three mini-releases under `out_dir/{affectnet,rafdb,bp4d}`, by source name."""
    out_dir = pathlib.Path(out_dir)
    return {
        "affectnet": generate_affectnet(out_dir / "affectnet", seed=seed),
        "rafdb": generate_rafdb(out_dir / "rafdb", seed=seed),
        "bp4d": generate_bp4d(out_dir / "bp4d", seed=seed),
    }


def cached_release(source: str, cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """The root of `source`'s mini-release in the cache (`$ABAW_JAX_CACHE`), generated once; what the tiny presets
    read when no release is given. Runs sharing the cache wait for each other's generation."""
    if source not in SOURCES:
        raise ValueError(f"unknown synthetic source {source!r}; expected one of {SOURCES}")
    base = pathlib.Path(cache_dir) if cache_dir else cache.cache_dir()
    folder = base / f"synthetic_{source}_v{VERSIONS[source]}_s{seed}"
    root = folder / "release"
    if not (root / _COMPLETE).exists():
        with release.build_lock(folder):
            if not (root / _COMPLETE).exists():
                print(f"Generating the synthetic {source} release in {root} (once)", flush=True)
                {"affectnet": generate_affectnet, "rafdb": generate_rafdb, "bp4d": generate_bp4d}[source](
                    root, seed=seed
                )
                (root / _COMPLETE).write_text("")
    return root
