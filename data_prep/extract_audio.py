"""Extracts each video's audio as 16 kHz mono WAV and computes audio features with one row per frame.

    python -m data_prep.extract_audio --videos=/data/affwild2/videos --out_dir=/data/affwild2/audio

writes `<out_dir>/wav/<video>.wav` (16 kHz mono float32) and `<out_dir>/logmel_mfcc/<video>.npy`
(float32 [frames, 64 log-mel + 20 MFCC]) with `<video>.json` beside it describing the columns, hop and
fps (see data_prep/audio.py for the frame alignment). `--videos` takes folders and/or files,
comma-separated. Other features: `--features=logmel` or `--features=mfcc` (with `--n_mels`, `--n_mfcc`,
`--window`), or a local transformers model folder (nothing is downloaded):

    python -m data_prep.extract_audio --videos=VIDEOS --out_dir=OUT --features=wav2vec2 \\
        --audio_model_dir=/models/wav2vec2-base-960h [--layer=6]

(`--features=hubert` likewise), or VGGish from a local torchvggish state dict, optionally with the
release's PCA + 8-bit quantisation (0.96 s examples every `--vggish_hop` seconds, interpolated to frames):

    python -m data_prep.extract_audio --videos=VIDEOS --out_dir=OUT --features=vggish \\
        --vggish_weights=/models/vggish-10086976.pth [--vggish_pca=/models/vggish_pca_params-970ea276.pth]

written to `<out_dir>/<features>/`, or `--features_dir=DIR`.
`--features=none` writes only the WAV files. The crops `<video>_left` / `<video>_right` share
`<video>.npy`. Videos without an audio stream or that fail to decode are reported and skipped; the exit
status is 1 if any failed to decode.
"""

import os

from absl import app, flags, logging

from abaw_jax.media import audio, faces
from abaw_jax.runtime import errors

_VIDEOS = flags.DEFINE_list("videos", None, "Video files and/or folders of videos.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output root for wav/ and the features.", required=True)
_FEATURES = flags.DEFINE_enum(
    "features",
    "logmel_mfcc",
    [*audio.SPECTRAL_KINDS, *audio.ENCODER_KINDS, audio.VGGISH_KIND, "none"],
    "Audio features.",
)
_FEATURES_DIR = flags.DEFINE_string("features_dir", None, "Features folder (default <out_dir>/<features>).")
_AUDIO_MODEL_DIR = flags.DEFINE_string("audio_model_dir", None, "Local Wav2Vec2/HuBERT model folder.")
_LAYER = flags.DEFINE_integer("layer", None, "Encoder hidden-state index (default: last layer).")
_N_MELS = flags.DEFINE_integer("n_mels", 64, "Mel bands of the log-mel features.")
_N_MFCC = flags.DEFINE_integer("n_mfcc", 20, "MFCC coefficients.")
_WINDOW = flags.DEFINE_integer("window", 1024, "Spectral window in samples at 16 kHz, centred per frame.")
_VGGISH_WEIGHTS = flags.DEFINE_string("vggish_weights", None, "Local torchvggish state dict (.pth).")
_VGGISH_PCA = flags.DEFINE_string(
    "vggish_pca", None, "Local VGGish PCA parameters (.pth or .npz): adds the release's PCA + quantisation."
)
_VGGISH_HOP = flags.DEFINE_float("vggish_hop", 0.96, "Seconds between VGGish examples (a multiple of 0.01).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    featurizer, features_dir = None, None
    if _FEATURES.value != "none":
        featurizer = audio.make_featurizer(
            _FEATURES.value,
            _AUDIO_MODEL_DIR.value,
            layer=_LAYER.value,
            n_mels=_N_MELS.value,
            n_mfcc=_N_MFCC.value,
            window=_WINDOW.value,
            vggish_weights=_VGGISH_WEIGHTS.value,
            vggish_pca=_VGGISH_PCA.value,
            vggish_hop=_VGGISH_HOP.value,
        )
        features_dir = _FEATURES_DIR.value or os.path.join(_OUT_DIR.value, _FEATURES.value)
    videos = faces.find_videos(_VIDEOS.value)
    report = audio.extract_all(videos, os.path.join(_OUT_DIR.value, "wav"), features_dir, featurizer)
    logging.info(
        "Done: %d of %d videos, %d without an audio stream, %d failed.",
        len(report.done),
        len(videos),
        len(report.no_audio),
        len(report.failed),
    )
    for name in report.no_audio:
        logging.warning("No audio stream: %s", name)
    for name, error in report.failed.items():
        logging.error("Failed %s: %s", name, error)
    return 1 if report.failed else 0


if __name__ == "__main__":
    errors.run(main)
