"""Our format for model weights: an orbax checkpoint of the parameters plus a `model.json`.

A directory written by `save_params` is enough to rebuild the module and its parameters:

    DIR/model.json   {"format_version": 1, "kind": "mae" | "vit", "config": {...dataclass fields...}}
    DIR/params/      orbax StandardCheckpointer save of the parameter tree (float arrays)

`load_params` restores the arrays against the parameter shapes of the model that `model.json` describes,
so a checkpoint that does not match its own description fails loudly instead of loading half a model.
The pretraining job exports the encoder this way; `python -m abaw_jax.convert_weights` reads and writes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from abaw_jax.models.mae import MAE, MAEConfig
from abaw_jax.models.vit import ViT, ViTConfig
from abaw_jax.runtime import orbax_reads
from abaw_jax.runtime.errors import ExplainedError

FORMAT_VERSION = 1
MODEL_FILE = "model.json"
PARAMS_DIR = "params"

ModelConfig = MAEConfig | ViTConfig


class ParamsFileError(ExplainedError, ValueError):
    """A params directory whose arrays cannot be restored for the model its model.json describes."""


def config_kind(config: ModelConfig) -> str:
    if isinstance(config, MAEConfig):
        return "mae"
    if isinstance(config, ViTConfig):
        return "vit"
    raise TypeError(f"expected a MAEConfig or ViTConfig, got {type(config).__name__}")


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """`{'kind': ..., 'config': ...}`, JSON-serialisable; nested dataclasses become nested dicts."""
    return {"kind": config_kind(config), "config": dataclasses.asdict(config)}


def config_from_dict(description: dict[str, Any]) -> ModelConfig:
    """Inverse of `config_to_dict`; unknown kinds or fields raise a ValueError naming them."""
    kind, fields = description.get("kind"), description.get("config", {})
    if not isinstance(fields, dict):
        raise ValueError(f"'config' must be an object of the model's fields, found {fields!r}")
    fields = dict(fields)
    if kind == "vit":
        return _dataclass_from_fields(ViTConfig, fields)
    if kind == "mae":
        fields["encoder"] = _dataclass_from_fields(ViTConfig, fields.get("encoder", {}))
        return _dataclass_from_fields(MAEConfig, fields)
    raise ValueError(f"model kind must be 'mae' or 'vit', found {kind!r}")


def _dataclass_from_fields(cls: type, fields: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}; known fields: {sorted(known)}")
    for field in dataclasses.fields(cls):
        # A value of another kind than the field's default (a hand-edited or damaged file) would fail later,
        # deep in the model's own checks, with a message that names neither the field nor the file.
        default = field.default
        if field.name in fields and isinstance(default, (bool, int, float, str)):
            value = fields[field.name]
            kinds = (int, float) if type(default) is float else (type(default),)
            if not isinstance(value, kinds) or (type(default) is not bool and isinstance(value, bool)):
                kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]
                raise ValueError(f"{cls.__name__}.{field.name} must be {kind}, found {value!r}")
    return cls(**fields)


def build_model(config: ModelConfig, dtype: jnp.dtype = jnp.float32) -> nn.Module:
    return MAE(config, dtype=dtype) if isinstance(config, MAEConfig) else ViT(config, dtype=dtype)


def example_inputs(config: ModelConfig) -> tuple[jax.Array, ...]:
    """One zero image (and, for the MAE, its masking noise): what `init` needs to trace the model."""
    vit = config.encoder if isinstance(config, MAEConfig) else config
    images = jnp.zeros((1, vit.image_size, vit.image_size, vit.channels), jnp.float32)
    return (images, jnp.zeros((1, vit.num_patches), jnp.float32)) if isinstance(config, MAEConfig) else (images,)


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """Parameter shapes and dtypes of the model `config` describes, without allocating them."""
    return jax.eval_shape(build_model(config).init, jax.random.key(0), *example_inputs(config))["params"]


@functools.lru_cache(maxsize=16)
def _compiled_init(config: ModelConfig):
    # One compilation per model shape, not per call: loading several encoders of one shape (feature sets,
    # fine-tuning starts) would otherwise compile the same init each time.
    return jax.jit(build_model(config).init)


def init_params(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """Freshly initialised parameters of the model `config` describes."""
    return _compiled_init(config)(jax.random.key(seed), *example_inputs(config))["params"]


def save_params(directory: str, params: Any, config: ModelConfig) -> None:
    """Writes `params` (a Flax parameter tree for `config`'s model) and `model.json` under `directory`."""
    directory = os.path.abspath(directory)
    params_path = os.path.join(directory, PARAMS_DIR)
    if os.path.exists(params_path):
        raise FileExistsError(f"{params_path} already exists; choose a new output directory")
    description = config_to_dict(config)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_path, params)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, MODEL_FILE), "w", encoding="utf-8") as f:
        json.dump({"format_version": FORMAT_VERSION, **description}, f, indent=2)


def load_model_config(directory: str) -> ModelConfig:
    """The model `directory/model.json` describes; a ParamsFileError naming the file (and line) when it is damaged."""
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no model description; is {directory} a save_params directory?")
    expected = (
        f'the {{"format_version": {FORMAT_VERSION}, "kind": ..., "config": ...}} object save_params writes; '
        "restore the file from the run that exported it, or export the weights again"
    )
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f)
    except json.JSONDecodeError as e:
        raise ParamsFileError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); expected {expected}"
        ) from e
    except UnicodeDecodeError as e:
        raise ParamsFileError(f"{path}: not UTF-8 text (byte {e.start}); expected {expected}") from e
    if not isinstance(description, dict):
        raise ParamsFileError(f"{path}: found a JSON {type(description).__name__}; expected {expected}")
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise ParamsFileError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    try:
        return config_from_dict(description)
    except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong kind fails in the config's checks
        raise ParamsFileError(f"{path}: {e}; expected {expected}") from e


def load_params(directory: str) -> tuple[dict[str, Any], ModelConfig]:
    """Reads a `save_params` directory; returns (params as jax arrays, config)."""
    directory = os.path.abspath(directory)
    config = load_model_config(directory)
    target = abstract_params(config)
    params_path = os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(params_path):
        raise FileNotFoundError(f"{params_path}: no parameters beside {MODEL_FILE}; is {directory} complete?")
    orbax_reads.silence_orphaned_reads()
    try:
        params = ocp.StandardCheckpointer().restore(params_path, target)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged or mismatched files
        raise ParamsFileError(
            f"{params_path}: cannot restore the parameters of the model in {MODEL_FILE} "
            f"({orbax_reads.root_cause(e)}); is the folder complete and written for that "
            "model?"
        ) from e
    return params, config
