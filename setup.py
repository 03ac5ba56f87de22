"""abaw_jax: JAX/Flax reimplementation of the ABAW6-winning affective behaviour analysis method."""
from setuptools import find_packages, setup

setup(
    name="abaw_jax",
    version="0.1.0",
    description="MAE face pretraining, fusion transformers and ABAW evaluation in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["abaw_jax", "abaw_jax.*", "data_prep", "data_prep.*"]),
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8",
        "transformers>=5,<6",
        "librosa>=0.11,<0.12",
        "opencv-python-headless>=4.10,<5",
        "av>=14",
        "scipy>=1.11",
        "ml-collections>=1.1,<2",
        "numpy>=1.26",
        "pillow>=10",
        "absl-py>=2",
        "tensorboardX>=2.6",
        "scikit-image>=0.24",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "torch==2.13.0",
            "timm>=1.0",
            "scikit-learn>=1.4",
        ],
    },
)
