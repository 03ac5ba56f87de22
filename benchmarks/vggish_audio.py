r"""VGGish embeddings of a waveform, seconds of audio per second: ours (numpy front end, jitted batched Flax
network) against torchvggish (its `waveform_to_examples` and `VGG` module) on the same audio and machine.

    python -m benchmarks.vggish_audio --seconds=60 --batch=64 --rounds=3

Both run the whole path from a 16 kHz waveform to [examples, 128] embeddings (no PCA), with the same
random weights (torchvggish's network with PyTorch's init, converted to ours) and the same batch size:
- `ours`: `vggish.waveform_to_examples` then `VGGishEmbedder` (jitted forward; the remainder padded to a
  multiple of 16 examples);
- `torchvggish`: `vggish_input.waveform_to_examples` then the module under `torch.inference_mode`, batch
  by batch, on CUDA if present (else CPU).
Each round times every implementation in turn (front end and network also separately), after one untimed
warm-up call each (compilation happens there); the table gives audio seconds per wall second (best round
and median), per CPU second of the process (all threads; steadier than wall time on a shared CPU), and the
best-round ratio to torchvggish. fp32 throughout, each library with its default matmul/conv precision.
"""

from __future__ import annotations

import os

# PyTorch's idle OpenMP threads must sleep rather than spin on the cores the JAX side needs next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import platform
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from abaw_jax.data import synthetic
from abaw_jax.models import vggish

_SECONDS = flags.DEFINE_float("seconds", 60.0, "Seconds of audio embedded per call.")
_BATCH = flags.DEFINE_integer("batch", 64, "Examples per network call, both implementations.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds; each times every implementation in turn.")


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv):
    del argv
    import torch
    from torchvggish import torchvggish as tv
    from torchvggish import vggish_input

    fps = 30
    arousal = np.sin(np.linspace(0, 20, int(_SECONDS.value * fps)))
    audio = synthetic.synthesize_audio(arousal, fps, vggish.SAMPLE_RATE, np.random.default_rng(0))
    seconds = len(audio) / vggish.SAMPLE_RATE

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tv._vgg(postprocess=False).eval()
    params = vggish.params_from_torch({k: v.numpy() for k, v in model.state_dict().items()})
    model = model.to(device)
    embedder = vggish.VGGishEmbedder(params, batch_size=_BATCH.value)

    def torch_network(examples):
        with torch.inference_mode():
            batches = torch.split(examples, _BATCH.value)
            out = [model(batch.to(device)).cpu() for batch in batches]
        return torch.cat(out).numpy()

    ours_examples = vggish.waveform_to_examples(audio)
    torch_examples = vggish_input.waveform_to_examples(audio, vggish.SAMPLE_RATE)
    stages = {
        "ours": {
            "front end": lambda: vggish.waveform_to_examples(audio),
            "network": lambda: embedder(ours_examples),
            "total": lambda: embedder(vggish.waveform_to_examples(audio)),
        },
        "torchvggish": {
            "front end": lambda: vggish_input.waveform_to_examples(audio, vggish.SAMPLE_RATE),
            "network": lambda: torch_network(torch_examples),
            "total": lambda: torch_network(vggish_input.waveform_to_examples(audio, vggish.SAMPLE_RATE)),
        },
    }
    reference = torch_network(torch_examples)
    agreement = np.abs(embedder(ours_examples) - reference).max() / np.abs(reference).max()
    for impl in stages.values():  # warm-up: compilation, cuDNN autotuning, thread pools
        impl["total"]()

    times = {(impl, stage): [] for impl, fns in stages.items() for stage in fns}
    for _ in range(_ROUNDS.value):
        for impl, fns in stages.items():
            for stage, fn in fns.items():
                times[impl, stage].append(_timed(fn))

    print(
        f"{seconds:.1f} s of audio, {len(ours_examples)} examples of 0.96 s, batch {_BATCH.value}, fp32; "
        f"largest difference {agreement:.1e} of the largest embedding"
    )
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}), torch "
        f"{torch.__version__} on {device} ({torch.get_num_threads()} threads), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| impl | stage | audio s / s (best) | audio s / s (median) | audio s / CPU s (best) | vs torchvggish "
        "(best wall) |"
    )
    print("|---|---|---|---|---|---|")
    for (impl, stage), runs in times.items():
        walls, cpus = zip(*runs)
        ratio = min(w for w, _ in times["torchvggish", stage]) / min(walls)
        print(
            f"| {impl} | {stage} | {seconds / min(walls):.1f} | {seconds / statistics.median(walls):.1f} | "
            f"{seconds / min(cpus):.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    app.run(main)
