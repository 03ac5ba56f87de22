"""VGGish (abaw_jax.models.vggish) against torchvggish with random weights, and the frame-aligned featurizer."""

import json
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from torchvggish import mel_features, vggish_input
from torchvggish import torchvggish as tv

from abaw_jax.data import synthetic
from abaw_jax.media import audio as audio_prep
from abaw_jax.models import vggish
from abaw_jax.models.torch_weights import WeightMismatchError

RATE = 16000


def _voice(seconds: float, seed: int = 0) -> np.ndarray:
    """The synthetic release's voiced audio: 5 harmonics, pitch and loudness following a smooth arousal."""
    frames = int(seconds * 30)
    arousal = np.sin(np.linspace(0, 3 * np.pi, frames))
    return synthetic.synthesize_audio(arousal, 30, RATE, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def pca_arrays():
    """A whitening PCA like the release's: orthogonal components scaled per row, and means."""
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    return rotation * rng.uniform(1.0, 20.0, size=(128, 1)), rng.normal(0.0, 0.5, size=128)


@pytest.fixture(scope="module")
def pca_file(pca_arrays, tmp_path_factory) -> pathlib.Path:
    """Saved as torchvggish's published file is: torch.save of a dict of numpy arrays."""
    path = tmp_path_factory.mktemp("pca") / "vggish_pca_params.pth"
    torch.save({"pca_eigen_vectors": pca_arrays[0], "pca_means": pca_arrays[1]}, path)
    return path


def _release_postprocessor(eigenvectors: np.ndarray, means: np.ndarray) -> tv.Postprocessor:
    """torchvggish's Postprocessor with given parameters (its constructor would download the release's)."""
    post = object.__new__(tv.Postprocessor)
    post._pca_matrix = torch.as_tensor(eigenvectors).float()
    post._pca_means = torch.as_tensor(means.reshape(-1, 1)).float()
    return post


def _torch_embed(model, examples: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(examples.astype(np.float32))[:, None]).numpy()


def test_mel_matrix_is_the_releases():
    reference = mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=64,
        num_spectrogram_bins=257,
        audio_sample_rate=RATE,
        lower_edge_hertz=125.0,
        upper_edge_hertz=7500.0,
    )
    np.testing.assert_allclose(vggish.mel_matrix(), reference, rtol=1e-12, atol=1e-12)


def test_front_end_equals_the_releases_waveform_to_examples():
    voice = _voice(5.3)
    reference = vggish_input.waveform_to_examples(voice, RATE, return_tensor=False)
    ours = vggish.waveform_to_examples(voice)
    assert ours.shape == reference.shape == (5, 96, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    assert np.ptp(reference) > 3  # voiced audio: log-mel values spread over several nats

    # A finer hop frames the same log-mel spectrogram differently; pad_end adds the zero-padded tail example.
    logmel = mel_features.log_mel_spectrogram(
        voice,
        audio_sample_rate=RATE,
        log_offset=0.01,
        window_length_secs=0.025,
        hop_length_secs=0.010,
        num_mel_bins=64,
        lower_edge_hertz=125,
        upper_edge_hertz=7500,
    )
    np.testing.assert_allclose(
        vggish.waveform_to_examples(voice, hop_frames=48), mel_features.frame(logmel, 96, 48), rtol=0, atol=1e-5
    )
    padded = vggish.waveform_to_examples(voice, pad_end=True)
    needed = 5 * 15360 + 15600
    assert len(padded) == 6 == vggish.num_examples(len(voice), pad_end=True)
    np.testing.assert_allclose(
        padded,
        vggish_input.waveform_to_examples(np.pad(voice, (0, needed - len(voice))), RATE, False),
        rtol=0,
        atol=1e-5,
    )


def test_audio_shorter_than_one_example():
    short = _voice(0.5)
    with pytest.raises(ValueError, match="8000 samples is shorter than one VGGish example"):
        vggish.waveform_to_examples(short)
    # pad_end=True: zero-padded to exactly one example, as the release would compute on the padded track.
    example = vggish.waveform_to_examples(short, pad_end=True)
    reference = vggish_input.waveform_to_examples(np.pad(short, (0, 15600 - 8000)), RATE, False)
    assert example.shape == reference.shape == (1, 96, 64)
    np.testing.assert_allclose(example, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(example[0, -10:], np.log(0.01), rtol=1e-6)  # frames past the audio: silence


def test_embeddings_equal_torchvggish(torch_vggish, weights_file):
    examples = vggish.waveform_to_examples(_voice(5.3))
    reference = _torch_embed(torch_vggish, examples)
    params, pca = vggish.load_weights(weights_file)
    assert pca is None
    ours = vggish.VGGishEmbedder(params, batch_size=4)(examples)  # a full batch and the remainder
    assert ours.shape == (5, 128) and ours.dtype == np.float32
    assert (reference > 0).mean() > 0.2 and reference.max() > 0.1  # informative, not collapsed by the ReLUs
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


def test_postprocessing_equals_the_releases_postprocessor(torch_vggish, pca_arrays, pca_file, tmp_path):
    rng = np.random.default_rng(2)
    embeddings = rng.normal(0.0, 0.2, size=(64, 128)).astype(np.float32)
    post = _release_postprocessor(*pca_arrays)
    reference = post.postprocess(torch.from_numpy(embeddings)).numpy()
    pca = vggish.load_pca(pca_file)
    ours = np.asarray(vggish.postprocess(embeddings, vggish.PCAParams(*map(np.float32, pca))))
    assert ((reference == 0) | (reference == 255)).mean() > 0.1  # clipping is exercised
    assert ((reference > 0) & (reference < 255)).mean() > 0.3
    np.testing.assert_array_equal(ours, reference)

    # The TF release's .npz with the same names, and a torchvggish VGGish state dict carrying its PCA.
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=pca_arrays[0], pca_means=pca_arrays[1])
    np.testing.assert_array_equal(vggish.load_pca(tmp_path / "pca.npz").eigenvectors, pca.eigenvectors)
    state = dict(torch_vggish.state_dict())
    state["pproc.pca_matrix"] = torch.as_tensor(pca_arrays[0]).float()
    state["pproc.pca_means"] = torch.as_tensor(pca_arrays[1].reshape(-1, 1)).float()
    torch.save(state, tmp_path / "with_pca.pth")
    examples = vggish.waveform_to_examples(_voice(3.0))
    torch_vggish.postprocess, torch_vggish.pproc = True, post
    try:
        full_reference = _torch_embed(torch_vggish, examples)
    finally:
        torch_vggish.postprocess = False
        del torch_vggish.pproc
    full = vggish.VGGishEmbedder.from_files(tmp_path / "with_pca.pth")(examples)
    # The networks differ by float rounding (~1e-6), which can move a value across a quantisation step.
    assert np.abs(full - full_reference).max() <= 1 and (full != full_reference).mean() < 0.01
    assert ((full_reference > 0) & (full_reference < 255)).mean() > 0.05  # not all clipped


def test_weight_file_errors_name_the_problem(torch_vggish, weights_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: VGGish weights file not found"):
        vggish.load_weights(tmp_path / "missing.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightMismatchError, match="notes.pth: not a readable PyTorch state dict"):
        vggish.load_weights(tmp_path / "notes.pth")
    state = {k: v.clone() for k, v in torch_vggish.state_dict().items()}
    del state["embeddings.4.bias"]
    state["features.0.weight"] = state["features.0.weight"][..., :2]
    state["classifier.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightMismatchError) as error:
        vggish.load_weights(tmp_path / "broken.pth")
    message = str(error.value)
    assert "broken.pth" in message and "missing: embeddings.4.bias" in message
    assert "not in VGGish: classifier.weight" in message
    assert "features.0.weight: found (64, 1, 3, 2), expected (64, 1, 3, 3)" in message

    torch.save({"pca_eigen_vectors": np.eye(128)[:64], "pca_means": np.zeros(128)}, tmp_path / "pca.pth")
    with pytest.raises(WeightMismatchError, match=r"pca.pth: pca_eigen_vectors has shape \(64, 128\)"):
        vggish.load_pca(tmp_path / "pca.pth")
    torch.save({"means": np.zeros(128)}, tmp_path / "pca_keys.pth")
    with pytest.raises(WeightMismatchError, match=r"missing PCA keys \['pca_eigen_vectors', 'pca_means'\]"):
        vggish.load_pca(tmp_path / "pca_keys.pth")
    with pytest.raises(ValueError, match="need a local torchvggish state dict"):
        audio_prep.make_featurizer("vggish")
    with pytest.raises(ValueError, match="multiple of 0.01 s, got 0.125"):
        audio_prep.make_featurizer("vggish", vggish_weights=weights_file, vggish_hop=0.125)


def test_featurizer_rows_are_release_embeddings_interpolated_at_frame_times(torch_vggish, weights_file):
    voice = _voice(4.1)
    num_frames, fps = 120, 30.0
    rows = audio_prep.make_featurizer("vggish", vggish_weights=weights_file)(voice, num_frames, fps)
    # Reference: torchvggish on the release's examples of the zero-padded track, placed at the middle of
    # each example's 0.975 s span and interpolated column by column at t_k = (k - 1/2) / fps.
    padded = np.pad(voice, (0, 4 * 15360 + 15600 - len(voice)))
    embeddings = _torch_embed(torch_vggish, vggish_input.waveform_to_examples(padded, RATE, False))
    centres = np.arange(len(embeddings)) * 0.96 + 0.4875
    times = (np.arange(num_frames) + 0.5) / fps
    reference = np.stack([np.interp(times, centres, column) for column in embeddings.T], axis=1)
    assert rows.shape == (num_frames, 128) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


def test_tone_onset_shows_at_its_time_and_not_far_before(weights_file):
    onset, fps = 3.0, 30.0
    track = np.zeros(int(6.0 * RATE), np.float32)
    track[int(onset * RATE) :] = _voice(6.0 - onset, seed=3)
    featurizer = audio_prep.make_featurizer("vggish", vggish_weights=weights_file, vggish_hop=0.48)
    rows = featurizer(track, 180, fps)
    times = (np.arange(180) + 0.5) / fps
    change = np.linalg.norm(rows - rows[0], axis=1) / np.linalg.norm(rows[0])
    # Documented reach of a row: hop + half an example = 0.48 + 0.4875 s.
    reach = 0.48 + 0.4875
    assert np.all(change[times < onset - reach] < 1e-6)
    assert np.all(change[times >= onset] > 0.05)
    first = times[np.argmax(change > 1e-6)]
    assert onset - reach <= first < onset


def _write_video(path: pathlib.Path, track: np.ndarray, fps: int, num_frames: int) -> None:
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=RATE)
        sound.layout = "mono"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 3 * i % 256, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, len(track), 1024):
            chunk = av.AudioFrame.from_ndarray(track[None, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = RATE, start
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())


def test_extract_audio_cli_writes_vggish_features(weights_file, pca_file, tmp_path):
    video = tmp_path / "videos" / "7-25-64x48.mp4"
    video.parent.mkdir()
    _write_video(video, _voice(2.0), fps=25, num_frames=50)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.extract_audio",
            f"--videos={video.parent}",
            f"--out_dir={out}",
            "--features=vggish",
            f"--vggish_weights={weights_file}",
            f"--vggish_pca={pca_file}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Done: 1 of 1 videos" in result.stderr
    features = np.load(out / "vggish" / "7-25-64x48.npy")
    description = json.loads((out / "vggish" / "7-25-64x48.json").read_text())
    assert features.shape == (50, 128) and features.dtype == np.float32
    assert description["kind"] == "vggish" and description["dim"] == 128 and description["fps"] == 25.0
    assert description["postprocessed"] and description["example_hop_seconds"] == 0.96
    assert description["pca"] == str(pca_file)
    # PCA-quantised embeddings of the decoded track, interpolated between examples: within 0..255.
    assert features.min() >= 0 and features.max() <= 255 and np.ptp(features) > 100
    expected = audio_prep.make_featurizer("vggish", vggish_weights=weights_file, vggish_pca=pca_file)(
        audio_prep.read_audio(video), 50, 25.0
    )
    np.testing.assert_allclose(features, expected, atol=1e-3)


def test_extract_audio_cli_names_a_missing_weights_file(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.extract_audio",
            f"--videos={tmp_path}",
            f"--out_dir={tmp_path / 'out'}",
            "--features=vggish",
            f"--vggish_weights={tmp_path / 'vggish.pth'}",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"{tmp_path / 'vggish.pth'}: VGGish weights file not found" in result.stderr
