"""Device mesh and shardings for data-parallel and FSDP-style training.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose devices also
split parameters and optimizer state). The batch is split over both. A parameter is sharded over `fsdp`
along its largest dimension that the axis size divides; everything else is replicated. With `fsdp=1`
this is plain data parallelism.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices; `fsdp` must divide the device count."""
    devices = devices if devices is not None else jax.devices()
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices")
    shape = (len(devices) // fsdp, fsdp)
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    if fsdp == 1 or not shape:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0 and shape[dim] >= fsdp:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def fsdp_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs): FSDP over the `fsdp` axis, else replicated."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(tuple(x.shape), fsdp)), abstract_tree)


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles the global batch from each process's slice (explicit host-to-device transfer)."""
    sharding = batch_sharding(mesh)
    global_shape = (local_batch.shape[0] * jax.process_count(),) + local_batch.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local_batch, global_shape)
