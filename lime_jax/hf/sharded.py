"""Pretrained parameters read straight into arrays sharded over a mesh: HF folders and GGUF files of any
size, for `evaluate --hf`, `model.init_from='hf:...'`, the harness backend, `inspect` and upcycling.

`plan_load(path, mesh, ...)` reads only config.json (or the GGUF metadata): the ModelConfig, the abstract
parameters, their shardings by the training rules (lime_jax/runtime/sharding.py: `embed` over fsdp;
heads, kv heads, mlp, vocab over tensor) and the bytes every device will hold, so that a model the mesh
cannot hold is refused before any tensor is read (`sharding.check_fits`).

`load_sharded(path, mesh, ...)` then builds each leaf from the devices' blocks: for each distinct block
this process's devices hold (`addressable_devices_indices_map`; a block several devices share is read
once), every layer's HF tensor is read for just the rows / columns of that block
(lime_jax/hf/weights.py `read_leaf`: safetensors blocks from the memory-mapped file; a GGUF tensor is
dequantised once, or just the rows a block needs), converted to `param_dtype` and copied to its devices.
Blocks larger than `host_chunk_bytes` go over in chunks (a stacked [L, ...] leaf's layers, an
embedding's rows) written into a buffer preallocated on the device (donated `dynamic_update_slice`), so
the host never holds a whole leaf: peak host memory is about one chunk (default 256 MiB) plus the
largest HF tensor read whole (a GGUF q / k projection), whatever the model's size. On several processes
each reads only the blocks of its own devices.

`load_pretrained` is `load_sharded` on one device (the unsharded load of before).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lime_jax.gguf import reader as gguf_reader
from lime_jax.hf import folder, weights
from lime_jax.model.model_config import ModelConfig
from lime_jax.runtime import sharding as shard_lib

HOST_CHUNK_BYTES = 256 * 2**20
# Top-level parameters that are not the checkpoint's (a topology's, the Seq-VCR projection): initialised.
FRESH = ("router", "seq_vcr_proj")


@dataclasses.dataclass(frozen=True)
class LoadPlan:
  """What loading `path` onto `mesh` makes, known before any tensor is read."""

  path: str
  cfg: ModelConfig
  mesh: jax.sharding.Mesh
  abstract: Any  # the parameters' ShapeDtypeStructs
  shardings: Any  # their NamedShardings (the training rules)
  total_bytes: int
  per_device_bytes: int
  replicated_bytes: int  # of per_device_bytes, the leaves no rule shards (norms...): whole on every device

  def describe(self) -> str:
    """One line: the parameters' bytes in all and per device, and the mesh."""
    return (
      f"parameters {shard_lib.gib(self.total_bytes)} ({self.cfg.param_dtype}), "
      f"{shard_lib.gib(self.per_device_bytes)} per device (of it {shard_lib.gib(self.replicated_bytes)} "
      f"in leaves every device holds whole) on mesh {shard_lib.describe_mesh(self.mesh)}"
    )

  def check_fits(self, device_bytes: int | None) -> None:
    """Raises DoesNotFitError naming the figures and the fsdp size that holds them when a device cannot
    hold its parameters (`device_bytes` None: no check)."""
    shard_lib.check_fits(self.abstract, self.mesh, device_bytes, f"The parameters of {self.path}")


def model_config(
  path: str, model_cfg: ModelConfig | None = None, param_dtype: str | None = None
) -> ModelConfig:
  """The ModelConfig of the checkpoint at `path`: `model_cfg`'s non-architecture fields (topology, dtypes,
  LIMe / Seq-VCR settings...) with the checkpoint's architecture; `param_dtype` None: model_cfg's, else
  'float32'."""
  fields = folder.model_fields(path)
  base = model_cfg if model_cfg is not None else ModelConfig(vocab_size=fields["vocab_size"])
  return dataclasses.replace(base, **fields, param_dtype=param_dtype or base.param_dtype)


def single_device_mesh() -> jax.sharding.Mesh:
  """A (1, 1, 1) mesh on this process's first device."""
  one = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
  return shard_lib.make_mesh(one, [jax.local_devices()[0]])


def plan_load(
  path: str, mesh: jax.sharding.Mesh, model_cfg: ModelConfig | None = None, *, param_dtype: str | None = None
) -> LoadPlan:
  """The LoadPlan of `path` on `mesh` (reads config.json or the GGUF metadata only)."""
  from lime_jax.model import transformer  # pylint: disable=import-outside-toplevel

  cfg = model_config(path, model_cfg, param_dtype)
  abstract = jax.eval_shape(lambda key: transformer.init_params(cfg, key), jax.random.key(0))
  shardings = shard_lib.tree_shardings(mesh, abstract)
  per_device, replicated = shard_lib.bytes_per_device(abstract, dict(mesh.shape))
  total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
  return LoadPlan(path, cfg, mesh, abstract, shardings, int(total), per_device, replicated)


def load_sharded(
  path: str,
  mesh: jax.sharding.Mesh,
  model_cfg: ModelConfig | None = None,
  *,
  param_dtype: str | None = None,
  rng: jax.Array | None = None,
  plan: LoadPlan | None = None,
  source: weights.TensorSource | None = None,
  host_chunk_bytes: int = HOST_CHUNK_BYTES,
) -> tuple[ModelConfig, dict]:
  """(ModelConfig, parameters sharded on `mesh` by the training rules) of an HF folder or GGUF file.

  `model_cfg`, `param_dtype`: as `model_config`. The topology's own parameters (params['router']) and a
  Seq-VCR projection are freshly initialised from `rng`, sharded too: with an identity-preserving setting
  (lime.init='identity', value_residual.init_lambda=0; DenseFormer and Hyper-Connections are the
  identity at init) the logits equal the pretrained plain model's (upcycling). `plan`: a `plan_load` of
  the same arguments (not recomputed); `source`: an opened `folder.open_source(path)` (e.g. to count
  the bytes read). Tensors are read in their stored dtype and converted through fp32.
  """
  plan = plan or plan_load(path, mesh, model_cfg, param_dtype=param_dtype)
  cfg = plan.cfg
  _log_source(path)
  _warn_if_not_identity(cfg)
  source = weights.aliased(source if source is not None else folder.open_source(path), cfg)
  by_path = {r.path: r for r in weights.recipes(cfg)}
  weights.check_source(source, list(by_path.values()), cfg)
  fresh = _fresh_params(cfg, plan, jax.random.key(0) if rng is None else rng)
  built: set[tuple[str, ...]] = set()

  def leaf(key_path: tuple, x: Any, sharding: Any) -> jax.Array:
    names = shard_lib.path_names(key_path)
    if names[0] in FRESH:
      return _lookup(fresh, names)
    recipe = by_path.get(names)
    if recipe is None or tuple(recipe.shape) != tuple(x.shape):
      have = "nothing" if recipe is None else f"shape {recipe.shape}"
      raise ValueError(
        f"{path!r}: the converted parameters do not match the model of this config: "
        f"{'/'.join(names)} {tuple(x.shape)} gets {have} from the checkpoint."
      )
    built.add(names)
    return build_leaf(source, recipe, sharding, x.dtype, host_chunk_bytes)

  params = jax.tree_util.tree_map_with_path(leaf, plan.abstract, plan.shardings)
  unused = sorted("/".join(p) for p in set(by_path) - built)
  if unused:
    raise ValueError(f"{path!r}: the converted parameters do not match the model of this config: {unused}.")
  return cfg, params


def load_pretrained(
  path: str,
  model_cfg: ModelConfig | None = None,
  *,
  param_dtype: str | None = None,
  rng: jax.Array | None = None,
) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params in lime_jax layout) of a local HF folder or GGUF file, on this process's first
  device (`load_sharded` on a one-device mesh; arguments as there): upcycling into any topology when
  `model_cfg` names one."""
  return load_sharded(path, single_device_mesh(), model_cfg, param_dtype=param_dtype, rng=rng)


# ------------------------------------------------------------------------------------------- leaves
def build_leaf(
  source: weights.TensorSource,
  recipe: weights.Recipe,
  sharding: jax.sharding.NamedSharding,
  dtype: Any,
  host_chunk_bytes: int = HOST_CHUNK_BYTES,
) -> jax.Array:
  """One parameter as a global array with `sharding`, built from the blocks this process's devices hold
  (each distinct block read once). Blocks larger than `host_chunk_bytes` (all of a process's blocks
  together) go over in chunks: a stacked leaf's layers, another leaf's rows as the HF tensor stores them
  (an embedding's vocabulary), each chunk written into a buffer preallocated on the device."""
  shape, dtype = tuple(recipe.shape), np.dtype(dtype)
  groups: dict[tuple, tuple[tuple[slice, ...], list]] = {}
  for device, index in sharding.addressable_devices_indices_map(shape).items():
    index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
    groups.setdefault(tuple((s.start, s.stop) for s in index), (index, []))[1].append(device)
  ordered = [groups[k] for k in sorted(groups)]  # equal rows together: a GGUF row block read once
  if recipe.stacked:
    arrays = _build_stacked(source, recipe, ordered, dtype, host_chunk_bytes)
  else:
    arrays = _build_by_rows(source, recipe, ordered, dtype, host_chunk_bytes)
  release = getattr(source, "release", None)
  if release is not None:
    release()
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _build_stacked(
  source: weights.TensorSource,
  recipe: weights.Recipe,
  groups: list[tuple[tuple[slice, ...], list]],
  dtype: np.dtype,
  host_chunk_bytes: int,
) -> list[jax.Array]:
  """The device blocks of a stacked leaf, layer chunk by layer chunk: layers outermost, so that each HF
  tensor is read (a GGUF one dequantised) once for all blocks."""
  first = groups[0][0]
  layers = first[0].stop - first[0].start
  block_shape = tuple(s.stop - s.start for s in first[1:])
  per_layer = math.prod(block_shape) * dtype.itemsize * len(groups)
  chunk = max(1, min(layers, host_chunk_bytes // max(per_layer, 1)))
  bufs: list[list[jax.Array]] = [[] for _ in groups]
  if chunk < layers:
    bufs = [[jnp.zeros((layers, *block_shape), dtype, device=d) for d in devices] for _, devices in groups]
  for start in range(0, layers, chunk):
    n = min(chunk, layers - start)
    hosts = [np.empty((n, *block_shape), dtype) for _ in groups]
    for i in range(n):
      for host, (index, _) in zip(hosts, groups):
        host[i] = weights.read_layer(source, recipe, index[0].start + start + i, index[1:])
    for g, (host, (_, devices)) in enumerate(zip(hosts, groups)):
      if chunk == layers:
        bufs[g] = [jax.device_put(host, d) for d in devices]
      else:
        bufs[g] = [_write_block(buf, jax.device_put(host, d), start, 0) for buf, d in zip(bufs[g], devices)]
    del hosts
  return [buf for group in bufs for buf in group]


def _build_by_rows(
  source: weights.TensorSource,
  recipe: weights.Recipe,
  groups: list[tuple[tuple[slice, ...], list]],
  dtype: np.dtype,
  host_chunk_bytes: int,
) -> list[jax.Array]:
  """The device blocks of an unstacked leaf, in chunks along the axis the HF tensor stores as rows
  (ours transposed for a 'linear' tensor: the last axis) when they exceed `host_chunk_bytes`."""
  block_shape = tuple(s.stop - s.start for s in groups[0][0])
  total = math.prod(block_shape) * dtype.itemsize * len(groups)
  if total <= host_chunk_bytes or len(block_shape) < 2:
    arrays = []
    for index, devices in groups:
      host = weights.read_leaf(source, recipe, index).astype(dtype, copy=False)
      arrays += [jax.device_put(host, d) for d in devices]
      del host
    return arrays
  axis = len(block_shape) - 1 if recipe.parts[0].kind == "linear" else 0
  size = block_shape[axis]
  step = max(1, size * host_chunk_bytes // total)
  bufs = [[jnp.zeros(block_shape, dtype, device=d) for d in devices] for _, devices in groups]
  for start in range(0, size, step):
    for g, (index, devices) in enumerate(groups):
      lo = index[axis].start + start
      part = (*index[:axis], slice(lo, min(lo + step, index[axis].stop)), *index[axis + 1 :])
      host = weights.read_leaf(source, recipe, part).astype(dtype, copy=False)
      bufs[g] = [_write_block(buf, jax.device_put(host, d), start, axis) for buf, d in zip(bufs[g], devices)]
      del host
  return [buf for group in bufs for buf in group]


@functools.partial(jax.jit, donate_argnums=0, static_argnums=3)
def _write_block(buf: jax.Array, chunk: jax.Array, start: jax.Array, axis: int) -> jax.Array:
  """`buf` with `chunk` written at `start` along `axis`, in place (the buffer is donated)."""
  return jax.lax.dynamic_update_slice_in_dim(buf, chunk, start, axis=axis)


def _fresh_params(cfg: ModelConfig, plan: LoadPlan, rng: jax.Array) -> dict:
  """The topology's parameters and the Seq-VCR projection, initialised on the mesh with their shardings."""
  from lime_jax.model import regularizers, topologies  # pylint: disable=import-outside-toplevel

  topology = topologies.get_topology(cfg.topology)
  makers = {}
  if topology.init_params is not None:
    makers["router"] = lambda: topology.init_params(jax.random.fold_in(rng, 0), cfg)
  if cfg.seq_vcr.enabled and cfg.seq_vcr.proj_dim:
    makers["seq_vcr_proj"] = lambda: regularizers.init_projection(jax.random.fold_in(rng, 1), cfg)
  return {
    name: jax.jit(make, out_shardings=plan.shardings[name])()
    for name, make in makers.items()
    if name in plan.abstract
  }


def _lookup(tree: Any, names: tuple[str, ...]) -> Any:
  for name in names:
    tree = tree[name]
  return tree


def _log_source(path: str) -> None:
  if gguf_reader.gguf_file(path):
    info = gguf_reader.describe(gguf_reader.GGUFCheckpoint.open(path))
    logging.info(
      "GGUF %s: architecture %s, %d parameters, tensor types %s",
      info["file"],
      info["architecture"],
      info["parameters"],
      info["tensor_types"],
    )


def _warn_if_not_identity(cfg: ModelConfig) -> None:
  if cfg.topology == "lime" and cfg.lime.init != "identity":
    logging.warning(
      "Upcycling into LIMe with lime.init=%r: the step-0 logits differ from the pretrained "
      "model's; use lime.init='identity' to start from them.",
      cfg.lime.init,
    )
  if cfg.topology == "value_residual" and cfg.value_residual.init_lambda != 0.0:
    logging.warning(
      "Upcycling into value_residual with init_lambda=%s: the step-0 logits differ from "
      "the pretrained model's; init_lambda=0 starts from them.",
      cfg.value_residual.init_lambda,
    )
