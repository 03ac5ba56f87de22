"""VGGish, the AudioSet release's audio embedding network, in Flax: front end, network, PCA post-processing.

Front end (the release's `vggish_input.waveform_to_examples` recipe): 16 kHz mono; frames of 25 ms (400
samples) every 10 ms (160 samples), no padding; a periodic Hann window; the magnitude of a 512-point FFT;
64 triangular mel bands from 125 to 7500 Hz, linear on the HTK mel scale 1127 ln(1 + f / 700) and leaving
out the DC bin; log(mel + 0.01). The log-mel frames are cut into examples of 96 frames x 64 bands, one
every 96 frames (0.96 s) in the release; example j starts at sample j * hop and covers 15600 samples
(0.975 s). It is numpy in float64, not JAX: it is a cheap per-track step (an FFT per 10 ms against about
1.7 GFLOP per 0.96 s in the network), tracks have any length (a jitted version would recompile per
length or need bucketing), and float64 reproduces the release's numpy arithmetic to rounding.

Network (`VGGish`, layer list and order of torchvggish's `make_layers` and `VGG.embeddings`): 3x3 convs
with padding 1 and ReLU, 64 | pool | 128 | pool | 256, 256 | pool | 512, 512 | pool, each pool 2x2 with
stride 2, so a [96, 64] example becomes [6, 4, 512]; flattened in (time, band, channel) order, which is
the order torchvggish restores by transposing its NCHW output to NHWC before `view`; then fully
connected 4096, 4096, 128, each followed by ReLU (the embedding too, as in torchvggish). Parameter
names follow the TF release's scopes (conv1, conv2, conv3_1, ..., fc1_1, fc1_2, fc2).

Post-processing (the release's `Postprocessor`): PCA with whitening, `(x - means) @ eigenvectors.T`,
clipped to [-2, 2] and quantised to the integers 0..255 (returned as float32).

Weights: a torchvggish state dict `.pth` (`features.{0,3,6,8,11,13}.{weight,bias}`,
`embeddings.{0,2,4}.{weight,bias}`; a state dict of torchvggish's `VGGish` module may also hold the PCA
as `pproc.pca_matrix` / `pproc.pca_means`) and the PCA parameters file (`vggish_pca_params-*.pth`, or the
TF release's `vggish_pca_params.npz`; keys `pca_eigen_vectors` [128, 128] and `pca_means` [128]). Conv
kernels go from torch's (out, in, h, w) to Flax's (h, w, in, out) and Linear weights are transposed.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from abaw_jax.models.torch_weights import WeightMismatchError, load_torch_checkpoint

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512
NUM_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EXAMPLE_HOP_FRAMES = 96  # the release's 0.96 s between examples
EXAMPLE_SAMPLES = (EXAMPLE_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES  # 15600 samples, 0.975 s
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
_MIN_BATCH = 16  # see VGGishEmbedder

# (Flax name, torchvggish module, output channels or units); None marks a 2x2 max pool.
_CONVS = (
    ("conv1", "features.0", 64),
    None,
    ("conv2", "features.3", 128),
    None,
    ("conv3_1", "features.6", 256),
    ("conv3_2", "features.8", 256),
    None,
    ("conv4_1", "features.11", 512),
    ("conv4_2", "features.13", 512),
    None,
)
_DENSES = (("fc1_1", "embeddings.0", 4096), ("fc1_2", "embeddings.2", 4096), ("fc2", "embeddings.4", EMBEDDING_SIZE))
_TORCH_NAMES = {flax: torch for flax, torch, _ in (*filter(None, _CONVS), *_DENSES)}
_PCA_KEYS = {"release": ("pca_eigen_vectors", "pca_means"), "module": ("pproc.pca_matrix", "pproc.pca_means")}


# --- Front end -------------------------------------------------------------------------------------------


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hertz, np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """[FFT_LENGTH // 2 + 1, NUM_BANDS] weights mapping FFT magnitudes to mel bands (float64).

    Band i is a triangle from edge i to edge i + 2 of NUM_BANDS + 2 edges spaced evenly in HTK mel between
    MEL_MIN_HZ and MEL_MAX_HZ, linear in mel (not Hz), peak 1 (no area normalisation); the DC bin is zero.
    """
    bins_mel = hertz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))[:, None]
    edges = np.linspace(hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins_mel - lower) / (centre - lower), (upper - bins_mel) / (upper - centre)))
    weights[0] = 0.0
    return weights


def log_mel_spectrogram(audio: np.ndarray, frames_per_block: int = 8192) -> np.ndarray:
    """[1 + (len(audio) - 400) // 160, 64] float64 log-mel frames of a 16 kHz mono waveform (no padding)."""
    audio = np.asarray(audio, np.float64)
    if audio.ndim != 1 or len(audio) < WINDOW_SAMPLES:
        raise ValueError(f"expected a mono waveform of at least {WINDOW_SAMPLES} samples, got shape {audio.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(audio, WINDOW_SAMPLES)[::HOP_SAMPLES]
    # Periodic Hann (period 400, as the release's `periodic_hann`), not np.hanning's symmetric one.
    window = np.hanning(WINDOW_SAMPLES + 1)[:-1]
    weights = mel_matrix()
    # Blocks bound the memory of long tracks (a 512-point complex spectrum per 10 ms).
    blocks = [
        np.abs(np.fft.rfft(frames[i : i + frames_per_block] * window, FFT_LENGTH)) @ weights
        for i in range(0, len(frames), frames_per_block)
    ]
    return np.log(np.concatenate(blocks) + LOG_OFFSET)


def num_examples(num_samples: int, hop_frames: int = EXAMPLE_HOP_FRAMES, pad_end: bool = False) -> int:
    """Examples `waveform_to_examples` makes of `num_samples` samples."""
    hop = hop_frames * HOP_SAMPLES
    if pad_end:
        return 1 + math.ceil(max(0, num_samples - EXAMPLE_SAMPLES) / hop)
    return 0 if num_samples < EXAMPLE_SAMPLES else 1 + (num_samples - EXAMPLE_SAMPLES) // hop


def waveform_to_examples(
    audio: np.ndarray, *, hop_frames: int = EXAMPLE_HOP_FRAMES, pad_end: bool = False
) -> np.ndarray:
    """[num_examples, 96, 64] float32 log-mel examples of a 16 kHz mono waveform, one every `hop_frames` x 10 ms.

    The result is a read-only strided view of the log-mel frames, so overlapping examples (a hop under 96
    frames) take no extra memory. With `pad_end=False` this is the release's framing: incomplete examples at
    the end are dropped and a waveform shorter than one example (15600 samples) is a ValueError. With
    `pad_end=True` the waveform is zero-padded at the end so that every sample lies in an example: a short
    waveform gives exactly one example, its log-mel frames past the audio are those of silence, log(0.01).
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {audio.shape}")
    if hop_frames < 1:
        raise ValueError(f"hop_frames must be at least 1, got {hop_frames}")
    count = num_examples(len(audio), hop_frames, pad_end)
    if count == 0:
        raise ValueError(
            f"a waveform of {len(audio)} samples is shorter than one VGGish example "
            f"({EXAMPLE_SAMPLES} samples, {EXAMPLE_SAMPLES / SAMPLE_RATE} s); pad_end=True zero-pads it"
        )
    needed = (count - 1) * hop_frames * HOP_SAMPLES + EXAMPLE_SAMPLES
    logmel = log_mel_spectrogram(np.pad(audio, (0, max(0, needed - len(audio))))[:needed])
    windows = np.lib.stride_tricks.sliding_window_view(logmel.astype(np.float32), EXAMPLE_FRAMES, axis=0)
    return windows[::hop_frames].transpose(0, 2, 1)  # [count, bands, frames] -> [count, frames, bands]


def example_centres(count: int, hop_frames: int = EXAMPLE_HOP_FRAMES) -> np.ndarray:
    """Middle of each example's span in seconds: example j covers [s_j, s_j + 0.975 s), s_j = j * hop."""
    starts = np.arange(count) * hop_frames * HOP_SAMPLES
    return (starts + EXAMPLE_SAMPLES / 2) / SAMPLE_RATE


# --- Network and post-processing -------------------------------------------------------------------------


class VGGish(nn.Module):
    """[batch, 96, 64] log-mel examples (time, band) -> [batch, 128] embeddings."""

    @nn.compact
    def __call__(self, examples: jax.Array) -> jax.Array:
        x = examples[..., None]
        for layer in _CONVS:
            if layer is None:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.Conv(layer[2], (3, 3), padding=((1, 1), (1, 1)), name=layer[0])(x))
        x = x.reshape(x.shape[0], -1)  # NHWC order: what torchvggish's transposes before `view` produce
        for name, _, units in _DENSES:
            x = nn.relu(nn.Dense(units, name=name)(x))
        return x


class PCAParams(NamedTuple):
    """The release's PCA: `eigenvectors` [128, 128] (rows are output components), `means` [128]."""

    eigenvectors: np.ndarray
    means: np.ndarray


def postprocess(embeddings: jax.Array, pca: PCAParams) -> jax.Array:
    """PCA-whitened, clipped to [-2, 2] and quantised to 0..255 (float32 integers), like `Postprocessor`."""
    projected = (embeddings - pca.means) @ pca.eigenvectors.T
    clipped = jnp.clip(projected, QUANTIZE_MIN, QUANTIZE_MAX)
    return jnp.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


@jax.jit
def embed_batch(params: Mapping, examples: jax.Array, pca: PCAParams | None = None) -> jax.Array:
    """Jitted forward: [batch, 96, 64] examples -> [batch, 128] embeddings, post-processed given `pca`."""
    embeddings = VGGish().apply({"params": params}, examples)
    return embeddings if pca is None else postprocess(embeddings, pca)


class VGGishEmbedder:
    """Embeds any number of examples in batches of `batch_size`. What remains is zero-padded to a multiple of
    16 (of `batch_size` if smaller) and cut into the powers of two of its binary expansion (21 -> 32; 40 ->
    32, 16), so there are at most log2(batch_size) compiled shapes and at most 15 padded examples. Batches
    under 16 are avoided because XLA's CPU convolutions are much slower per example at batch 2-8 (measured
    0.13-0.3 CPU s against 0.02 at 16 and above)."""

    def __init__(self, params: Mapping, pca: PCAParams | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.params = jax.device_put(params)
        self.pca = None if pca is None else jax.device_put(PCAParams(*map(np.float32, pca)))
        self.batch_size = batch_size

    @classmethod
    def from_files(
        cls, weights: str | os.PathLike, pca: str | os.PathLike | None = None, batch_size: int = 64
    ) -> VGGishEmbedder:
        """Reads the torchvggish state dict and, given, the PCA file (else the state dict's own PCA, if any:
        post-processing happens exactly when a PCA is found)."""
        params, embedded_pca = load_weights(weights)
        return cls(params, load_pca(pca) if pca is not None else embedded_pca, batch_size)

    def __call__(self, examples: np.ndarray) -> np.ndarray:
        """[n, 96, 64] -> [n, 128] float32."""
        examples = np.asarray(examples, np.float32)
        if examples.ndim != 3 or examples.shape[1:] != (EXAMPLE_FRAMES, NUM_BANDS):
            raise ValueError(f"expected examples [n, {EXAMPLE_FRAMES}, {NUM_BANDS}], got {examples.shape}")
        full_batches, remainder = divmod(len(examples), self.batch_size)
        step = min(_MIN_BATCH, self.batch_size)
        padded = -(-remainder // step) * step
        sizes = [self.batch_size] * full_batches
        sizes += [1 << bit for bit in reversed(range(padded.bit_length())) if padded >> bit & 1]
        outputs, start = [], 0
        for size in sizes:  # dispatched asynchronously; read back once at the end
            batch = examples[start : start + size]
            batch = np.pad(batch, ((0, size - len(batch)), (0, 0), (0, 0))) if len(batch) < size else batch
            outputs.append(embed_batch(self.params, batch, self.pca))
            start += size
        if not outputs:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        return np.concatenate([np.asarray(out) for out in outputs])[: len(examples)].astype(np.float32)


# --- Weights ---------------------------------------------------------------------------------------------


def torch_state_shapes() -> dict[str, tuple[int, ...]]:
    """torchvggish state-dict keys of the network and their shapes (torch layouts)."""
    template = jax.eval_shape(VGGish().init, jax.random.key(0), jnp.zeros((1, EXAMPLE_FRAMES, NUM_BANDS)))
    shapes = {}
    for (layer, kind), value in traverse_util.flatten_dict(template["params"]).items():
        shape = value.shape
        if kind == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        shapes[f"{_TORCH_NAMES[layer]}.{'weight' if kind == 'kernel' else 'bias'}"] = tuple(shape)
    return shapes


def params_from_torch(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """Flax parameters of `VGGish` from a torchvggish state dict (PCA keys `pproc.*` are ignored).

    Missing keys, keys the network does not have and wrongly shaped arrays raise `WeightMismatchError`
    naming every one of them.
    """
    expected = torch_state_shapes()
    state = {k: v for k, v in state.items() if not k.startswith("pproc.")}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: found {tuple(np.shape(state[k]))}, expected {expected[k]}"
        for k in expected
        if k in state and tuple(np.shape(state[k])) != expected[k]
    ]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("not in VGGish: " + ", ".join(unexpected))
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise WeightMismatchError(f"{source} is not a torchvggish VGGish state dict; " + " | ".join(problems))
    flat = {}
    for layer, torch_name in _TORCH_NAMES.items():
        weight = np.asarray(state[f"{torch_name}.weight"], np.float32)
        flat[(layer, "kernel")] = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
        flat[(layer, "bias")] = np.asarray(state[f"{torch_name}.bias"], np.float32)
    return traverse_util.unflatten_dict(flat)


def load_weights(path: str | os.PathLike) -> tuple[dict, PCAParams | None]:
    """Flax parameters from a torchvggish `.pth` state dict, and the PCA it holds (`pproc.*`) or None."""
    path = _existing(path, "VGGish weights")
    try:
        state = load_torch_checkpoint(str(path))
    except WeightMismatchError:
        raise
    except Exception as error:  # torch.load raises many types for files that are not checkpoints
        raise WeightMismatchError(
            f"{path}: not a readable PyTorch state dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    pca = None
    if any(k.startswith("pproc.") for k in state):
        pca = _pca_from(state, _PCA_KEYS["module"], str(path))
    return params_from_torch(state, str(path)), pca


def load_pca(path: str | os.PathLike) -> PCAParams:
    """The PCA parameters from the torchvggish `.pth` (numpy arrays or tensors) or the TF release's `.npz`."""
    path = _existing(path, "VGGish PCA parameters")
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                values = dict(data)
        else:
            values = _load_torch_arrays(path)
    except Exception as error:
        raise WeightMismatchError(
            f"{path}: not a readable PCA parameters file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    if not isinstance(values, Mapping):
        raise WeightMismatchError(f"{path}: expected a dict of PCA arrays, found {type(values).__name__}")
    keys = _PCA_KEYS["module"] if _PCA_KEYS["module"][0] in values else _PCA_KEYS["release"]
    return _pca_from(values, keys, str(path))


def _pca_from(values: Mapping, keys: tuple[str, str], source: str) -> PCAParams:
    missing = [k for k in keys if k not in values]
    if missing:
        raise WeightMismatchError(f"{source}: missing PCA keys {missing}; found {sorted(values)[:8]}")
    vectors = np.asarray(_numpy(values[keys[0]]), np.float64)
    means = np.asarray(_numpy(values[keys[1]]), np.float64)
    size = EMBEDDING_SIZE
    if vectors.shape != (size, size):
        raise WeightMismatchError(f"{source}: {keys[0]} has shape {vectors.shape}, expected {(size, size)}")
    if means.size != size or means.squeeze().ndim != 1:
        raise WeightMismatchError(f"{source}: {keys[1]} has shape {means.shape}, expected ({size},) or ({size}, 1)")
    return PCAParams(vectors, means.reshape(size))


def _load_torch_arrays(path: pathlib.Path) -> Mapping:
    import torch

    # The published PCA file pickles numpy arrays; allow exactly those, nothing else, in the safe loader.
    allowed = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _existing(path: str | os.PathLike, what: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found (nothing is downloaded; point at a local file)")
    return path
