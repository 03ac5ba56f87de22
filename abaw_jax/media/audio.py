"""Audio tracks of videos as 16 kHz mono, and audio features with one row per video frame.

Decoding uses PyAV (there is no ffmpeg binary to call): every audio frame is resampled to 16 kHz mono
float32 with `av.AudioResampler`; sample 0 is placed at the video stream's start, so audio before it
(encoder priming) is dropped and a late start is filled with silence, and the tail is cut to the
stream's stated duration (AAC pads its last frame).

Frame alignment. A video with N frames at `fps` shows frame k (1-based) from (k-1)/fps to k/fps; its
feature row k-1 describes the audio around the middle of that interval, t_k = (k - 1/2) / fps:

* `SpectralFeatures` (default): a Hann window of `window` samples centred on sample round(t_k * sr)
  (zeros outside the track), its power spectrum, `n_mels` mel bands in dB (librosa's filter bank and
  `power_to_db` with ref 1 and no top-dB clipping, so every row is independent of the others), and
  `n_mfcc` MFCCs of those bands. `parts` chooses log-mel, MFCC or both (concatenated in that order).
* `EncoderFeatures`: a Wav2Vec2 or HuBERT model loaded from a local transformers folder (and its feature
  extractor when the folder has one) runs over the waveform in chunks (30 s by default, overlapping by
  field - stride samples so the states form one regular grid); hidden state j of a chunk starting at
  sample s describes the receptive field centred at s + j * stride + (field - 1) / 2, where stride and
  field follow from the model's convolution kernels and strides (320 and 400 samples for the published
  models). Row k-1 is the linear interpolation of these states at t_k (the first/last state beyond them).
* `VGGishFeatures`: VGGish embeddings (abaw_jax.models.vggish, weights from a local torchvggish `.pth`;
  PCA-whitened and quantised to 0..255 when PCA parameters are given) of the release's 0.96 s examples on a
  regular grid, one every `hop_seconds` (0.96 s, the release's framing, by default) from sample 0, the
  track zero-padded at the end so every sample lies in an example (a track shorter than one example gives
  one). Example j covers [j * hop, j * hop + 0.975 s); row k-1 is the linear interpolation, at t_k, of
  the embeddings placed at their examples' centres j * hop + 0.4875 s (the first/last beyond them), as
  for the encoders. So a row inside the track depends only on audio within hop + 0.4875 s of t_k.

Files: `<wav_dir>/<video>.wav` (float32 WAV) and `<features_dir>/<video>.npy` (float32 [N, D]) with
`<features_dir>/<video>.json` describing it (kind, dim, columns, sample rate, hop = sr / fps samples per
row, window, fps, N, for encoders the model folder, type and layer, for VGGish the weights and PCA
files, the example hop and the example centres' rule). Audio is per video file, so the
two crops of a two-person video, `<video>_left` and `<video>_right`, both use `<video>.npy`: strip the
suffix to find it.
"""

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Protocol

import av
import librosa
import numpy as np
import soundfile
from absl import logging

from abaw_jax.models import vggish

SAMPLE_RATE = 16000
ENCODER_KINDS = ("wav2vec2", "hubert")
VGGISH_KIND = "vggish"


class NoAudioStreamError(ValueError):
    """The video file has no audio stream."""


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes the first audio stream of a media file to mono float32 at `sample_rate` Hz.

    Sample 0 is at the start time of the first video stream (of the file's time origin if it has none).
    """
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise NoAudioStreamError(f"{path}: this file has no audio stream.")
        stream = container.streams.audio[0]
        origin = _start_seconds(container.streams.video[0]) if container.streams.video else 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        first_time = None
        for frame in container.decode(stream):
            if first_time is None:
                first_time = frame.time or 0.0
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        end_time = None
        if stream.duration is not None:
            end_time = _start_seconds(stream) + float(stream.duration * stream.time_base)
    if not chunks:
        raise ValueError(f"{path}: the audio stream holds no decodable samples.")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    offset = int(round((first_time - origin) * sample_rate))
    audio = np.pad(audio, (offset, 0)) if offset > 0 else audio[-offset:]
    if end_time is not None:
        audio = audio[: int(round((end_time - origin) * sample_rate))]
    return audio


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Writes mono float32 samples as a float WAV file."""
    soundfile.write(os.fspath(path), audio, sample_rate, subtype="FLOAT")


def video_frames(path: str | os.PathLike) -> tuple[int, float]:
    """Number of frames and frame rate of the first video stream (packets are counted if unstated)."""
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: this file has no video stream.")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"{path}: the video stream states no frame rate.")
        count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
    return count, float(rate)


def frame_times(num_frames: int, fps: float) -> np.ndarray:
    """The middle of each frame's display interval in seconds, t_k = (k - 1/2) / fps for k = 1..N."""
    return (np.arange(num_frames) + 0.5) / fps


class Featurizer(Protocol):
    """Maps a 16 kHz mono waveform to float32 features [num_frames, dim] aligned to video frames."""

    kind: str

    def __call__(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray: ...

    def metadata(self) -> dict: ...


@dataclasses.dataclass(frozen=True)
class SpectralFeatures:
    """Log-mel bands and/or MFCCs of a window centred on each video frame."""

    parts: tuple[str, ...] = ("logmel", "mfcc")
    n_mels: int = 64
    n_mfcc: int = 20
    window: int = 1024
    sample_rate: int = SAMPLE_RATE
    frames_per_batch: int = 4096

    def __post_init__(self):
        unknown = set(self.parts) - {"logmel", "mfcc"}
        if not self.parts or unknown:
            raise ValueError(f"Spectral feature parts must be 'logmel' and/or 'mfcc', got {self.parts}.")

    @property
    def kind(self) -> str:
        return "_".join(self.parts)

    @property
    def columns(self) -> dict[str, list[int]]:
        widths = {"logmel": self.n_mels, "mfcc": self.n_mfcc}
        columns, start = {}, 0
        for part in self.parts:
            columns[part] = [start, start + widths[part]]
            start += widths[part]
        return columns

    def __call__(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        centres = np.round(frame_times(num_frames, fps) * self.sample_rate).astype(np.int64)
        hann = librosa.filters.get_window("hann", self.window, fftbins=True)
        mel_basis = librosa.filters.mel(sr=self.sample_rate, n_fft=self.window, n_mels=self.n_mels)
        rows = []
        for start in range(0, num_frames, self.frames_per_batch):
            windows = _centred_windows(audio, centres[start : start + self.frames_per_batch], self.window)
            power = np.abs(np.fft.rfft(windows * hann, axis=1)) ** 2
            logmel = librosa.power_to_db(power @ mel_basis.T, ref=1.0, amin=1e-10, top_db=None)
            parts = {"logmel": logmel}
            if "mfcc" in self.parts:
                parts["mfcc"] = librosa.feature.mfcc(S=logmel.T, n_mfcc=self.n_mfcc).T
            rows.append(np.concatenate([parts[p] for p in self.parts], axis=1))
        if not rows:
            return np.zeros((0, sum(e - s for s, e in self.columns.values())), np.float32)
        return np.concatenate(rows).astype(np.float32)

    def metadata(self) -> dict:
        return {"columns": self.columns, "window_samples": self.window, "window_function": "hann"}


class EncoderFeatures:
    """Hidden states of a local Wav2Vec2 / HuBERT model, interpolated to the video frame times."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        kind: str,
        *,
        layer: int | None = None,
        chunk_seconds: float = 30.0,
        sample_rate: int = SAMPLE_RATE,
    ):
        # Only this path needs torch and transformers; transformers' model modules import torchvision,
        # which loads next to the CPU build of torch only through torch_compat.
        from abaw_jax.torch_compat import import_torchvision

        import_torchvision()
        import transformers

        if kind not in ENCODER_KINDS:
            raise ValueError(f"Unknown audio encoder kind {kind!r}; expected one of {ENCODER_KINDS}.")
        model_dir = pathlib.Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir}: expected a transformers model folder (config.json and weights saved "
                "with save_pretrained); nothing is downloaded."
            )
        self.model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        if self.model.config.model_type != kind:
            raise ValueError(
                f"{model_dir}: expected a {kind} model, found model_type "
                f"{self.model.config.model_type!r} in its config.json."
            )
        num_states = self.model.config.num_hidden_layers + 1
        if layer is not None and not -num_states <= layer < num_states:
            raise ValueError(
                f"{model_dir}: layer {layer} does not exist; the model has hidden states 0 (input "
                f"embeddings) to {num_states - 1} (last layer)."
            )
        self.extractor = None
        if (model_dir / "preprocessor_config.json").is_file():
            self.extractor = transformers.AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        self.kind = kind
        self.model_dir = model_dir
        self.layer = layer
        self.sample_rate = sample_rate
        self.stride, self.field = conv_geometry(self.model.config.conv_kernel, self.model.config.conv_stride)
        self.chunk = max(1, int(chunk_seconds * sample_rate) // self.stride) * self.stride

    def hidden_states(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Times in seconds [T] and hidden states [T, hidden] of the whole waveform, chunk by chunk."""
        import torch

        if len(audio) < self.field:
            raise ValueError(
                f"Audio of {len(audio)} samples is shorter than the model's receptive field ({self.field})."
            )
        # Chunk i starts at i * chunk and runs field - stride samples past the next start, so it yields
        # exactly chunk / stride states and the states of consecutive chunks continue the same grid.
        starts = list(range(0, len(audio), self.chunk))
        if len(starts) > 1 and len(audio) - starts[-1] < self.field:
            starts.pop()
        overlap = self.field - self.stride
        ends = [min(start + self.chunk + overlap, len(audio)) for start in starts[:-1]] + [len(audio)]
        times, states = [], []
        for start, end in zip(starts, ends):
            inputs = self._model_inputs(audio[start:end])
            with torch.inference_mode():
                out = self.model(inputs, output_hidden_states=self.layer is not None)
            hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
            hidden = hidden[0].float().numpy()
            states.append(hidden)
            centres = start + np.arange(len(hidden)) * self.stride + (self.field - 1) / 2
            times.append(centres / self.sample_rate)
        return np.concatenate(times), np.concatenate(states)

    def __call__(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        times, states = self.hidden_states(audio)
        return interpolate_rows(times, states, frame_times(num_frames, fps)).astype(np.float32)

    def metadata(self) -> dict:
        return {
            "model_dir": str(self.model_dir),
            "model_type": self.model.config.model_type,
            "layer": "last" if self.layer is None else self.layer,
            "stride_samples": self.stride,
            "receptive_field_samples": self.field,
            "chunk_samples": self.chunk,
        }

    def _model_inputs(self, audio: np.ndarray):
        import torch

        if self.extractor is None:
            return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        features = self.extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")
        return features["input_values"]


class VGGishFeatures:
    """VGGish embeddings of 0.96 s examples on a regular grid, interpolated to the video frame times."""

    kind = VGGISH_KIND

    def __init__(
        self,
        weights: str | os.PathLike,
        pca: str | os.PathLike | None = None,
        *,
        hop_seconds: float = 0.96,
        batch_size: int = 64,
    ):
        hop_frames = int(round(hop_seconds * SAMPLE_RATE / vggish.HOP_SAMPLES))
        if hop_frames < 1 or abs(hop_frames * vggish.HOP_SAMPLES / SAMPLE_RATE - hop_seconds) > 1e-9:
            raise ValueError(f"The VGGish example hop must be a positive multiple of 0.01 s, got {hop_seconds}.")
        self.embedder = vggish.VGGishEmbedder.from_files(weights, pca, batch_size)
        self.weights = pathlib.Path(weights)
        self.pca = None if pca is None else pathlib.Path(pca)
        self.hop_frames = hop_frames

    def __call__(self, audio: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        examples = vggish.waveform_to_examples(audio, hop_frames=self.hop_frames, pad_end=True)
        centres = vggish.example_centres(len(examples), self.hop_frames)
        return interpolate_rows(centres, self.embedder(examples), frame_times(num_frames, fps)).astype(np.float32)

    def metadata(self) -> dict:
        return {
            "weights": str(self.weights),
            "pca": str(self.pca) if self.pca else None,
            "postprocessed": self.embedder.pca is not None,
            "example_seconds": vggish.EXAMPLE_SAMPLES / SAMPLE_RATE,
            "example_hop_seconds": self.hop_frames * vggish.HOP_SAMPLES / SAMPLE_RATE,
            "example_centre": "j * example_hop_seconds + example_seconds / 2 for example j (0-based); rows "
            "interpolate linearly between centres",
        }


def conv_geometry(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """Total stride and receptive field (in input samples) of a stack of 1-D convolutions."""
    stride, field = 1, 1
    for kernel, step in zip(kernels, strides):
        field += (kernel - 1) * stride
        stride *= step
    return stride, field


def interpolate_rows(times: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Linear interpolation of rows `values[i]` given at increasing `times[i]`, held flat outside."""
    if len(times) == 1:
        return np.repeat(values, len(query), axis=0)
    right = np.clip(np.searchsorted(times, query), 1, len(times) - 1)
    t0, t1 = times[right - 1], times[right]
    weight = np.clip((query - t0) / (t1 - t0), 0.0, 1.0)[:, None]
    return values[right - 1] * (1 - weight) + values[right] * weight


SPECTRAL_KINDS = {"logmel_mfcc": ("logmel", "mfcc"), "logmel": ("logmel",), "mfcc": ("mfcc",)}


def make_featurizer(
    kind: str,
    model_dir: str | os.PathLike | None = None,
    *,
    layer: int | None = None,
    n_mels: int = 64,
    n_mfcc: int = 20,
    window: int = 1024,
    vggish_weights: str | os.PathLike | None = None,
    vggish_pca: str | os.PathLike | None = None,
    vggish_hop: float = 0.96,
) -> Featurizer:
    """'logmel_mfcc', 'logmel', 'mfcc' (librosa), 'wav2vec2' / 'hubert' (needs `model_dir`) or 'vggish'
    (needs `vggish_weights`; `vggish_pca` adds the release's PCA and quantisation)."""
    if kind == VGGISH_KIND:
        if not vggish_weights:
            raise ValueError("The vggish features need a local torchvggish state dict (--vggish_weights).")
        return VGGishFeatures(vggish_weights, vggish_pca, hop_seconds=vggish_hop)
    if kind in ENCODER_KINDS:
        if not model_dir:
            raise ValueError(f"The {kind} features need a local model folder (--audio_model_dir).")
        return EncoderFeatures(model_dir, kind, layer=layer)
    if kind not in SPECTRAL_KINDS:
        raise ValueError(
            f"Unknown audio features {kind!r}; expected one of {(*SPECTRAL_KINDS, *ENCODER_KINDS, VGGISH_KIND)}."
        )
    return SpectralFeatures(SPECTRAL_KINDS[kind], n_mels=n_mels, n_mfcc=n_mfcc, window=window)


def save_features(
    features_dir: str | os.PathLike, video: str, features: np.ndarray, featurizer: Featurizer, fps: float
) -> pathlib.Path:
    """Writes `<features_dir>/<video>.npy` and the `<video>.json` that describes it."""
    features_dir = pathlib.Path(features_dir)
    features_dir.mkdir(parents=True, exist_ok=True)
    path = features_dir / f"{video}.npy"
    np.save(path, features.astype(np.float32))
    description = {
        "video": video,
        "kind": featurizer.kind,
        "num_frames": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "sample_rate": SAMPLE_RATE,
        "fps": fps,
        "hop_samples": SAMPLE_RATE / fps,
        "frame_time": "(k - 0.5) / fps for frame k (1-based), row k - 1",
        **featurizer.metadata(),
    }
    (features_dir / f"{video}.json").write_text(json.dumps(description, indent=2) + "\n")
    return path


@dataclasses.dataclass
class AudioReport:
    """The outcome of a batch: videos done, videos without audio, videos that failed (with the error)."""

    done: list[str] = dataclasses.field(default_factory=list)
    no_audio: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def extract_all(
    videos: Sequence[str | os.PathLike],
    wav_dir: str | os.PathLike,
    features_dir: str | os.PathLike | None = None,
    featurizer: Featurizer | None = None,
) -> AudioReport:
    """Writes each video's 16 kHz mono WAV and, given a featurizer, its frame-aligned features.

    Videos without an audio stream and videos that cannot be decoded are reported and skipped.
    """
    wav_dir = pathlib.Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    report = AudioReport()
    start = time.perf_counter()
    for index, path in enumerate(map(pathlib.Path, videos), start=1):
        try:
            audio = read_audio(path)
            write_wav(wav_dir / f"{path.stem}.wav", audio)
            if featurizer is not None:
                num_frames, fps = video_frames(path)
                _warn_if_lengths_differ(path, len(audio) / SAMPLE_RATE, num_frames / fps)
                save_features(features_dir, path.stem, featurizer(audio, num_frames, fps), featurizer, fps)
        except NoAudioStreamError as error:
            report.no_audio.append(path.stem)
            logging.warning("[%d/%d] skipped: %s", index, len(videos), error)
            continue
        except (OSError, ValueError, av.FFmpegError) as error:
            report.failed[path.stem] = str(error)
            logging.error("[%d/%d] failed: %s", index, len(videos), error)
            continue
        report.done.append(path.stem)
        logging.info(
            "[%d/%d] %s: %.1f s of audio; %.1f s elapsed",
            index,
            len(videos),
            path.stem,
            len(audio) / SAMPLE_RATE,
            time.perf_counter() - start,
        )
    return report


def _centred_windows(audio: np.ndarray, centres: np.ndarray, length: int) -> np.ndarray:
    """Rows audio[c - length // 2 : c - length // 2 + length] for each centre c, zeros outside."""
    half = length // 2
    padded = np.zeros(max(len(audio), int(centres.max(initial=0)) + 1) + length, np.float32)
    padded[half : half + len(audio)] = audio
    return padded[centres[:, None] + np.arange(length)]


def _start_seconds(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _warn_if_lengths_differ(path: pathlib.Path, audio_seconds: float, video_seconds: float) -> None:
    if abs(audio_seconds - video_seconds) > 0.5:
        logging.warning(
            "%s: audio lasts %.2f s but the video %.2f s; rows past the audio's end describe silence.",
            path,
            audio_seconds,
            video_seconds,
        )
