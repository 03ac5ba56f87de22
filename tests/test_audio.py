"""Tests for abaw_jax.media.audio: PyAV extraction to 16 kHz mono, frame-aligned spectral and encoder features."""

import json
import pathlib
import subprocess
import sys

import av
import cv2
import librosa
import numpy as np
import pytest
from scipy import interpolate, signal
from scipy.io import wavfile

from abaw_jax.media import audio
from abaw_jax.torch_compat import import_torchvision

# scipy's WAV reader, the independent reference here, does not know the 'fact' chunk of float WAVs.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.io.wavfile.WavFileWarning")

SOURCE_RATE = 44100


def _write_mp4(path: pathlib.Path, num_frames: int, fps: int, pcm: np.ndarray | None, audio_delay: int = 0) -> None:
    """mpeg4 video of `num_frames` grey-ramp frames and, given `pcm` [channels, n], an AAC track that
    starts `audio_delay` samples after the video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        track = None
        if pcm is not None:
            track = container.add_stream("aac", rate=SOURCE_RATE)
            track.layout = "stereo" if pcm.shape[0] == 2 else "mono"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 4 * i % 256, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if track is not None:
            for start in range(0, pcm.shape[1], 1024):
                chunk = np.ascontiguousarray(pcm[:, start : start + 1024], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=track.layout.name)
                frame.sample_rate, frame.pts = SOURCE_RATE, audio_delay + start
                container.mux(track.encode(frame))
            container.mux(track.encode())


@pytest.fixture(scope="module")
def tone_video(tmp_path_factory):
    """2 s, 25 fps, stereo at 44.1 kHz: 440 Hz (amplitude 0.4) left, 1000 Hz (0.2) right."""
    t = np.arange(2 * SOURCE_RATE) / SOURCE_RATE
    pcm = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)])
    path = tmp_path_factory.mktemp("tone") / "1-30-64x48.mp4"
    _write_mp4(path, num_frames=50, fps=25, pcm=pcm)
    return path, pcm


def _amplitude_at(x: np.ndarray, freq: float, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) / (np.hanning(len(x)).sum() / 2)
    return spectrum[np.argmin(np.abs(np.fft.rfftfreq(len(x), 1 / rate) - freq))]


def test_read_audio_resamples_to_16k_mono(tone_video):
    path, pcm = tone_video
    x = audio.read_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 2 * 16000

    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    spectrum = np.abs(np.fft.rfft(x))
    assert freqs[np.argmax(spectrum)] == pytest.approx(440, abs=1)
    # Both channels are in the mix at their 2:1 amplitude ratio.
    assert _amplitude_at(x, 440, 16000) / _amplitude_at(x, 1000, 16000) == pytest.approx(2, rel=0.1)

    # Independent reference: scipy's polyphase resampler on the channel mean, up to the mix gain.
    reference = signal.resample_poly(pcm.mean(axis=0), 160, 441)
    middle = slice(1000, -1000)
    assert np.corrcoef(x[middle], reference[middle])[0, 1] > 0.99


def test_late_audio_start_is_padded_with_silence(tmp_path):
    t = np.arange(SOURCE_RATE) / SOURCE_RATE
    path = tmp_path / "late.mp4"
    _write_mp4(path, num_frames=25, fps=25, pcm=0.5 * np.sin(2 * np.pi * 440 * t)[None], audio_delay=SOURCE_RATE // 4)
    x = audio.read_audio(path)
    # The muxer's bookkeeping of the encoder's 1024 priming samples can shift the stated end by a few ms.
    assert len(x) == pytest.approx(1.25 * 16000, abs=80)
    assert np.abs(x[:3900]).max() < 0.01
    assert np.abs(x[4100:]).max() > 0.4
    assert _amplitude_at(x[4100:], 440, 16000) > 0.4


def test_wav_round_trip(tmp_path, tone_video):
    x = audio.read_audio(tone_video[0])
    audio.write_wav(tmp_path / "a.wav", x)
    rate, y = wavfile.read(tmp_path / "a.wav")
    assert rate == 16000 and y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(x, y)


def test_video_frames_agree_with_opencv(tone_video):
    num_frames, fps = audio.video_frames(tone_video[0])
    capture = cv2.VideoCapture(str(tone_video[0]))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    assert (num_frames, fps) == (decoded, capture.get(cv2.CAP_PROP_FPS)) == (50, 25.0)


def test_video_without_audio_is_a_clear_error_and_skipped_in_batches(tmp_path, tone_video):
    silent = tmp_path / "102.mp4"
    _write_mp4(silent, num_frames=5, fps=25, pcm=None)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(audio.NoAudioStreamError, match="102.mp4"):
        audio.read_audio(silent)

    report = audio.extract_all([silent, broken, tone_video[0]], tmp_path / "wav")
    assert report.done == ["1-30-64x48"]
    assert report.no_audio == ["102"]
    assert list(report.failed) == ["broken"] and "broken.mp4" in report.failed["broken"]
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["1-30-64x48.wav"]


def _librosa_window(x: np.ndarray, centre: int, length: int) -> np.ndarray:
    window = np.zeros(length, np.float32)
    lo, hi = centre - length // 2, centre - length // 2 + length
    window[max(0, -lo) : length - max(0, hi - len(x))] = x[max(0, lo) : min(len(x), hi)]
    return window


def test_spectral_features_match_librosa_on_each_frames_window():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=16000) * np.linspace(0.1, 1, 16000)).astype(np.float32)  # 1 s
    fps = 30000 / 1001
    num_frames = 33  # The video is slightly longer than its audio: the last rows see zeros.
    featurizer = audio.SpectralFeatures(n_mels=40, n_mfcc=13, window=800)
    features = featurizer(x, num_frames, fps)
    assert features.shape == (num_frames, 53) and features.dtype == np.float32

    for k in (1, 2, 17, 30, 33):
        centre = round((k - 0.5) / fps * 16000)
        window = _librosa_window(x, centre, 800)
        mel = librosa.feature.melspectrogram(y=window, sr=16000, n_fft=800, hop_length=800, center=False, n_mels=40)
        logmel = librosa.power_to_db(mel, ref=1.0, top_db=None)
        mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=13)
        np.testing.assert_allclose(features[k - 1, :40], logmel[:, 0], atol=1e-3)
        np.testing.assert_allclose(features[k - 1, 40:], mfcc[:, 0], atol=1e-3)

    only_mfcc = audio.make_featurizer("mfcc", n_mels=40, n_mfcc=13, window=800)(x, num_frames, fps)
    np.testing.assert_array_equal(only_mfcc, features[:, 40:])
    assert audio.make_featurizer("logmel").kind == "logmel"


def test_interpolate_rows_matches_scipy():
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.uniform(0.01, 0.03, size=40))
    values = rng.normal(size=(40, 5))
    query = np.linspace(-0.1, times[-1] + 0.1, 97)
    reference = interpolate.interp1d(times, values, axis=0, bounds_error=False, fill_value=(values[0], values[-1]))(
        query
    )
    np.testing.assert_allclose(audio.interpolate_rows(times, values, query), reference, atol=1e-12)


def test_conv_geometry_of_the_published_wav2vec2_encoder():
    # wav2vec 2.0: 25 ms receptive field and 20 ms stride at 16 kHz.
    assert audio.conv_geometry((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == (320, 400)


def _tiny_encoder(tmp_path: pathlib.Path, kind: str, with_extractor: bool) -> pathlib.Path:
    import_torchvision()
    import torch
    import transformers

    torch.manual_seed(0)
    sizes = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    if kind == "wav2vec2":
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**sizes))
    else:
        model = transformers.HubertModel(transformers.HubertConfig(**sizes))
    folder = tmp_path / kind
    model.save_pretrained(folder)
    if with_extractor:
        transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return folder


def _direct(model, inputs, layer=None) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(inputs, dtype=torch.float32)[None], output_hidden_states=True)
    return (out.last_hidden_state if layer is None else out.hidden_states[layer])[0].numpy()


def _direct_then_aligned(model, inputs, num_frames: int, fps: float, layer=None) -> np.ndarray:
    states = _direct(model, inputs, layer)
    times = (np.arange(len(states)) * 320 + 199.5) / 16000
    frame_times = (np.arange(num_frames) + 0.5) / fps
    return interpolate.interp1d(times, states, axis=0, bounds_error=False, fill_value=(states[0], states[-1]))(
        frame_times
    )


def test_wav2vec2_features_equal_the_model_output_aligned_to_frames(tmp_path):
    import transformers

    folder = _tiny_encoder(tmp_path, "wav2vec2", with_extractor=True)
    rng = np.random.default_rng(2)
    x = (0.1 * rng.normal(size=24000) + 0.05).astype(np.float32)  # 1.5 s, offset so normalising shows
    num_frames, fps = 45, 30.0

    encoder = audio.make_featurizer("wav2vec2", folder)
    features = encoder(x, num_frames, fps)
    assert features.shape == (num_frames, 32) and features.dtype == np.float32

    model = transformers.Wav2Vec2Model.from_pretrained(folder).eval()
    normalised = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    np.testing.assert_allclose(features, _direct_then_aligned(model, normalised, num_frames, fps), atol=1e-4)

    middle = audio.EncoderFeatures(folder, "wav2vec2", layer=1)(x, num_frames, fps)
    expected = _direct_then_aligned(model, normalised, num_frames, fps, layer=1)
    np.testing.assert_allclose(middle, expected, atol=1e-4)
    assert not np.allclose(middle, features, atol=1e-2)


def test_hubert_features_and_chunking(tmp_path):
    import transformers

    folder = _tiny_encoder(tmp_path, "hubert", with_extractor=False)
    x = np.sin(np.arange(24000) * 0.05).astype(np.float32)
    encoder = audio.EncoderFeatures(folder, "hubert")
    model = transformers.HubertModel.from_pretrained(folder).eval()
    np.testing.assert_allclose(encoder(x, 45, 30.0), _direct_then_aligned(model, x, 45, 30.0), atol=1e-4)

    # 0.5 s chunks: one state every 20 ms across chunk boundaries, and the first chunk's 25 states are the
    # model's output on its 0.5 s plus the 80 samples its last receptive field reaches past them.
    chunked = audio.EncoderFeatures(folder, "hubert", chunk_seconds=0.5)
    times, states = chunked.hidden_states(x)
    assert len(times) == len(states) == 74  # (24000 - 400) // 320 + 1
    np.testing.assert_allclose(times, (np.arange(74) * 320 + 199.5) / 16000, atol=1e-12)
    first = _direct(model, x[:8080])
    assert first.shape == (25, 32)
    np.testing.assert_allclose(states[:25], first, atol=1e-4)

    with pytest.raises(ValueError, match="layer 3 does not exist"):
        audio.EncoderFeatures(folder, "hubert", layer=3)
    with pytest.raises(ValueError, match="model_type 'hubert'"):
        audio.EncoderFeatures(folder, "wav2vec2")
    with pytest.raises(FileNotFoundError, match="config.json"):
        audio.EncoderFeatures(tmp_path / "missing", "hubert")


def test_extract_all_writes_frame_aligned_features(tmp_path, tone_video):
    featurizer = audio.make_featurizer("logmel_mfcc")
    report = audio.extract_all([tone_video[0]], tmp_path / "wav", tmp_path / "features", featurizer)
    assert report.done == ["1-30-64x48"]
    features = np.load(tmp_path / "features" / "1-30-64x48.npy")
    assert features.shape == (50, 84) and features.dtype == np.float32
    description = json.loads((tmp_path / "features" / "1-30-64x48.json").read_text())
    assert description["num_frames"] == 50 and description["dim"] == 84
    assert description["fps"] == 25.0 and description["hop_samples"] == 640
    assert description["columns"] == {"logmel": [0, 64], "mfcc": [64, 84]}
    # The 440 Hz tone dominates every frame: its mel band is the loudest.
    band_of_440 = np.argmin(np.abs(librosa.mel_frequencies(n_mels=66, fmax=8000)[1:-1] - 440))
    assert (np.argmax(features[:, :64], axis=1) == band_of_440).mean() > 0.9


def test_extract_audio_cli_on_synthetic_videos(synthetic_affwild2, tmp_path):
    videos = sorted((synthetic_affwild2 / "videos").glob("*.mp4"))
    with_va = [v for v in videos if list(synthetic_affwild2.glob(f"annotations/VA_*/*/{v.stem}.txt"))]
    pair = next(v for v in videos if (synthetic_affwild2 / "cropped_aligned" / f"{v.stem}_left").is_dir())
    chosen = [with_va[0], pair]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.extract_audio",
            f"--videos={','.join(map(str, chosen))}",
            f"--out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Done: 2 of 2 videos" in result.stderr

    for video in chosen:
        capture = cv2.VideoCapture(str(video))
        fps, num_frames = capture.get(cv2.CAP_PROP_FPS), 0
        while capture.read()[0]:
            num_frames += 1
        rate, wav = wavfile.read(tmp_path / "wav" / f"{video.stem}.wav")
        assert rate == 16000 and wav.ndim == 1
        assert abs(len(wav) / rate - num_frames / fps) < 1 / fps
        features = np.load(tmp_path / "logmel_mfcc" / f"{video.stem}.npy")
        assert features.shape == (num_frames, 84) and np.isfinite(features).all()
        assert json.loads((tmp_path / "logmel_mfcc" / f"{video.stem}.json").read_text())["fps"] == fps

    # The synthetic voice gets louder with arousal, so each frame's mean log-mel level follows the
    # arousal labelled for that frame.
    labels = np.loadtxt(
        next(synthetic_affwild2.glob(f"annotations/VA_*/*/{chosen[0].stem}.txt")), delimiter=",", skiprows=1
    )
    features = np.load(tmp_path / "logmel_mfcc" / f"{chosen[0].stem}.npy")
    rows = min(len(labels), len(features))
    valid = labels[:rows, 1] > -5
    level = features[:rows, :64].mean(axis=1)
    assert np.corrcoef(level[valid], labels[:rows, 1][valid])[0, 1] > 0.5
