"""Untrained audio encoders in the layouts the features stage reads, for CPU runs of Table 6's audio rows.

`write_stand_ins(out_dir)` writes `<out_dir>/hubert/` and `<out_dir>/wav2vec2/` (transformers folders of a
2-layer, 32-wide HuBERT / wav2vec2 with a feature extractor) and `<out_dir>/vggish.pth` (a torchvggish state dict
of the full VGGish shape, 288 MB). Their weights are random (seeded), not pretrained: they let the rows with
Hubert, wav2vec2 or VGGish run end to end where the published models are absent (`configs/abaw.py:table6_tiny`,
the tests), and their features carry no learned audio information. The command is
`data_prep/make_stand_in_audio.py`. Needs torch (the dev extras).
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

KINDS = ("hubert", "wav2vec2", "vggish")
# Layer sizes of the stand-in HuBERT / wav2vec2: about 30,000 weights, with the published models' seven-layer
# convolution stack (kernels and strides from the default config), so frames come every 320 samples as theirs do.
_ENCODER_SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def model_path(out_dir: str | pathlib.Path, kind: str) -> pathlib.Path:
    """Where `write_stand_ins` puts `kind`: a folder for HuBERT / wav2vec2, a .pth for VGGish."""
    return pathlib.Path(out_dir) / ("vggish.pth" if kind == "vggish" else kind)


def write_stand_ins(out_dir: str | pathlib.Path, kinds: Sequence[str] = KINDS, seed: int = 0) -> dict[str, str]:
    """Writes the untrained models of `kinds` under `out_dir`; returns {kind: path}."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown audio kinds {unknown}; expected some of {KINDS}")
    import torch

    from abaw_jax.models import vggish
    from abaw_jax.torch_compat import import_torchvision

    import_torchvision()  # transformers' model modules import torchvision (see media.audio.EncoderFeatures)
    import transformers

    torch.manual_seed(seed)
    paths = {}
    for kind in kinds:
        path = model_path(out_dir, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "vggish":
            # He-scaled like a trained network's weights, so activations stay O(1) through every layer.
            state = {
                name: torch.randn(shape) * (2.0 / math.prod(shape[1:])) ** 0.5
                if name.endswith("weight")
                else 0.1 * torch.randn(shape)
                for name, shape in vggish.torch_state_shapes().items()
            }
            torch.save(state, path)
        else:
            model_class, config_class = {
                "hubert": (transformers.HubertModel, transformers.HubertConfig),
                "wav2vec2": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config),
            }[kind]
            model_class(config_class(**_ENCODER_SIZES)).save_pretrained(path)
            transformers.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(path)
        paths[kind] = str(path)
    return paths
