"""Device mesh, logical axis names, and the rules that turn them into shardings.

Mesh axes: ('data', 'fsdp', 'tensor'); one size may be -1 (the devices the others leave).

Logical axes. Every parameter and the key activations carry names (`PARAM_AXES`, `constrain`):

  batch   sequences of the global batch        length  positions
  embed   d_model                              heads   query heads       kv_heads  kv heads
  kv      head dim                             mlp     SwiGLU hidden     vocab     vocabulary
  layers  the scanned layer axis               norm    RMSNorm scales    router    LIMe routing axes
  proj    Seq-VCR projection features

`RULES` maps them to mesh axes: batch -> data x fsdp; embed -> fsdp (ZeRO-3 / FSDP: each parameter is
split over fsdp and all-gathered for use; gradients are reduce-scattered back); heads, kv_heads, mlp,
vocab, proj -> tensor (Megatron-style tensor parallelism); length, kv, layers, norm, router ->
replicated.
A spec never uses one mesh axis twice: the first dim that asks for an axis gets it (activations
[batch, length, embed] thus keep embed replicated, because batch already took fsdp). A dim whose size
is not divisible by its mesh axes' product stays replicated (e.g. a 61-token vocab on tensor=2): still
correct, only that tensor is stored whole on every device of the axis. The LIMe router (L^2 R^2
weights for 'kv') is tiny and replicated, as is every other topology parameter under params['router']
without a rule of its own; the 'dynamic' router's [L, D, R, L] weight is fsdp-sharded on D. Optimizer state
mirrors the parameters (optax's mu / nu have the parameters' shapes and paths):
its leaves take the rule of the parameter whose path they end with; counters are replicated.

Axis types are `Auto`: we pin the shardings of the step's inputs and outputs (parameters, optimizer
state, batch) and a few activations (`constrain`), and XLA's sharding propagation places everything
else. `Explicit` axes would make every intermediate's sharding part of its type and require
annotations through the whole model (including the LIMe custom VJP and the Seq-VCR reductions); with
Auto the same model code runs on one CPU and on a pod slice, and the Seq-VCR batch covariance stays a
plain reduction over the batch that XLA turns into the right collectives, so its value does not
depend on the mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lime_jax.runtime import errors

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LogicalAxes = tuple[str | None, ...]

# Logical axis -> mesh axes (None: replicated). Order inside a tuple is major to minor.
RULES: dict[str, str | tuple[str, ...] | None] = {
  "batch": BATCH_AXES,
  "length": None,
  "embed": "fsdp",
  "heads": "tensor",
  "kv_heads": "tensor",
  "kv": None,
  "mlp": "tensor",
  "vocab": "tensor",
  "layers": None,
  "norm": None,
  "router": None,
  "proj": "tensor",
}

# Parameter path suffix (dict keys) -> logical axes of its dims. Shapes in the comments.
PARAM_AXES: tuple[tuple[tuple[str, ...], LogicalAxes], ...] = (
  (("embed",), ("vocab", "embed")),  # [V, D]
  (("unembed",), ("embed", "vocab")),  # [D, V]
  (("final_norm", "scale"), ("norm",)),  # [D]
  (("attn_norm", "scale"), ("layers", "norm")),  # [L, D]
  (("mlp_norm", "scale"), ("layers", "norm")),  # [L, D]
  (("layers", "wq"), ("layers", "embed", "heads", "kv")),  # [L, D, N, H]
  (("layers", "wkv"), ("layers", "embed", "kv_heads", "kv")),  # [L, D, R, 2H]
  (("layers", "wo"), ("layers", "heads", "kv", "embed")),  # [L, N, H, D]
  (("mlp", "w_gate"), ("layers", "embed", "mlp")),  # [L, D, F]
  (("mlp", "w_up"), ("layers", "embed", "mlp")),  # [L, D, F]
  (("mlp", "w_down"), ("layers", "mlp", "embed")),  # [L, F, D]
  # Options of the pretrained families (lime_jax/hf/): biases, q/k norms, LayerNorm biases, positions.
  (("layers", "bq"), ("layers", "heads", "kv")),  # [L, N, H]
  (("layers", "bkv"), ("layers", "kv_heads", "kv")),  # [L, R, 2H]
  (("layers", "bo"), ("layers", "norm")),  # [L, D]
  (("layers", "q_norm"), ("layers", "kv")),  # [L, H]
  (("layers", "k_norm"), ("layers", "kv")),  # [L, H]
  (("mlp", "b_gate"), ("layers", "mlp")),  # [L, F]
  (("mlp", "b_up"), ("layers", "mlp")),  # [L, F]
  (("mlp", "b_down"), ("layers", "norm")),  # [L, D]
  (("final_norm", "bias"), ("norm",)),  # [D]
  (("attn_norm", "bias"), ("layers", "norm")),  # [L, D]
  (("mlp_norm", "bias"), ("layers", "norm")),  # [L, D]
  (("attn_post_norm", "scale"), ("layers", "norm")),  # [L, D]
  (("mlp_post_norm", "scale"), ("layers", "norm")),  # [L, D]
  (("attn_post_norm", "bias"), ("layers", "norm")),  # [L, D]
  (("mlp_post_norm", "bias"), ("layers", "norm")),  # [L, D]
  (("pos_embed",), ("length", "embed")),  # [P, D]
  (("router", "w_LRMR"), ("layers", "router", "router", "router")),  # LIMe kv [L, R, L, R]
  (("router", "w_LRM"), ("layers", "router", "router")),  # LIMe static / top_p [L, R, L]
  (("router", "w_LDRM"), ("layers", "embed", "router", "router")),  # LIMe dynamic [L, D, R, L]
  (("router", "norm_scale_LD"), ("layers", "norm")),  # LIMe v1 [L, D]
  (("seq_vcr_proj",), ("layers", "embed", "proj")),  # Seq-VCR projection [K, D, P]
)


# ------------------------------------------------------------------------------------------- mesh
def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor); one -1 takes the devices the others leave."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(
        f"config.mesh: {num_devices} devices are not divisible by the fixed axes' product "
        f"{fixed}; change config.mesh sizes."
      )
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"config.mesh: sizes {dict(zip(MESH_AXES, sizes))} use {math.prod(sizes)} devices but "
      f"{num_devices} are available; set one axis to -1 or make the product match."
    )
  return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
  devices = devices or jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ------------------------------------------------------------------------------------ logical axes
def logical_to_spec(
  axes: Sequence[str | None],
  shape: Sequence[int],
  mesh_shape_: dict[str, int],
  rules: dict[str, Any] | None = None,
) -> P:
  """The PartitionSpec of an array with these logical axes and shape (see the module docstring)."""
  rules = RULES if rules is None else rules
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match the array's rank {len(shape)}.")
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    target = rules.get(name) if name is not None else None
    target = (target,) if isinstance(target, str) else tuple(target or ())
    # Size-1 mesh axes shard nothing; an axis already used by an earlier dim cannot be reused.
    target = tuple(a for a in target if a not in used and mesh_shape_.get(a, 1) > 1)
    if not target or size % math.prod(mesh_shape_[a] for a in target):
      spec.append(None)
      continue
    used.update(target)
    spec.append(target[0] if len(target) == 1 else target)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def path_names(path: tuple) -> tuple[str, ...]:
  """The dict keys and attribute names along a pytree path."""
  names = []
  for k in path:
    for attr in ("key", "name"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return tuple(names)


def axes_for_path(names: tuple[str, ...], ndim: int) -> LogicalAxes | None:
  """Logical axes of the parameter (or optimizer moment) at `names`; None if no rule matches."""
  for suffix, axes in PARAM_AXES:
    if names[-len(suffix) :] == suffix and len(axes) == ndim:
      return axes
  if "router" in names:  # other topologies' mixing weights (DenseFormer, hyper-connections...): small
    return ("router",) * ndim
  return None


def param_logical_axes(params: Any) -> Any:
  """A tree like `params` holding each leaf's logical axes; raises for a parameter without a rule."""

  def leaf(path, x):
    axes = axes_for_path(path_names(path), len(x.shape))
    if axes is None:
      raise ValueError(
        f"parameter {'/'.join(path_names(path))} {tuple(x.shape)} has no logical axes: "
        "add its path to lime_jax/runtime/sharding.py PARAM_AXES."
      )
    return axes

  return jax.tree_util.tree_map_with_path(leaf, params)


def tree_shardings(mesh: jax.sharding.Mesh, abstract_tree: Any) -> Any:
  """NamedShardings for a tree of arrays by path: ruled leaves per RULES, every other leaf replicated."""
  sizes = dict(mesh.shape)

  def leaf(path, x):
    shape = tuple(getattr(x, "shape", ()))
    axes = axes_for_path(path_names(path), len(shape)) if shape else None
    spec = logical_to_spec(axes, shape, sizes) if axes is not None else P()
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(leaf, abstract_tree)


def unruled_params(params: Any) -> list[str]:
  """Paths of parameters that no PARAM_AXES rule covers (they are replicated)."""
  paths = []
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    if axes_for_path(path_names(path), len(x.shape)) is None:
      paths.append("/".join(path_names(path)))
  return paths


def state_shardings(mesh: jax.sharding.Mesh, abstract_state: Any) -> Any:
  """Shardings of the train state: parameters per the rules, optimizer moments like their parameter,
  step counters replicated. A parameter without a rule is replicated (correct, not memory-optimal),
  with a warning naming it."""
  missing = unruled_params(abstract_state.params)
  if missing and math.prod(mesh.shape.values()) > 1:
    logging.warning(
      "No sharding rule for parameters %s: replicated. Add them to lime_jax/runtime/sharding.py PARAM_AXES.",
      ", ".join(missing),
    )
  return tree_shardings(mesh, abstract_state)


# ------------------------------------------------------------------------------------------ memory
def describe_mesh(mesh: jax.sharding.Mesh) -> str:
  """'data=1 fsdp=8 tensor=1 (8 devices, 2 processes)'."""
  axes = " ".join(f"{a}={n}" for a, n in mesh.shape.items())
  processes = len({d.process_index for d in mesh.devices.flat})
  return f"{axes} ({mesh.devices.size} devices" + (f", {processes} processes)" if processes > 1 else ")")


def bytes_per_device(abstract_tree: Any, sizes: dict[str, int]) -> tuple[int, int]:
  """(bytes each device holds of the tree's arrays placed by the rules on a mesh of these axis `sizes`,
  the part of them in leaves no rule shards: norms, routers, unruled leaves, whole on every device).
  Every dim a rule shards divides evenly (`logical_to_spec`), so all devices hold the same."""
  total = replicated = 0
  for path, x in jax.tree_util.tree_leaves_with_path(abstract_tree):
    shape = tuple(getattr(x, "shape", ()))
    axes = axes_for_path(path_names(path), len(shape)) if shape else None
    spec = tuple(logical_to_spec(axes, shape, sizes)) if axes is not None else ()
    shard = list(shape)
    for i, target in enumerate(spec):
      for axis in (target,) if isinstance(target, str) else tuple(target or ()):
        shard[i] //= sizes[axis]
    nbytes = math.prod(shard) * np.dtype(x.dtype).itemsize
    total += nbytes
    if axes is None or not any(RULES.get(a) for a in axes if a is not None):
      replicated += nbytes
  return total, replicated


def device_memory_bytes() -> int | None:
  """The memory of one local device as its runtime states it (`memory_stats()['bytes_limit']`: GPUs
  and TPUs); None where it states none (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def gib(n: float) -> str:
  """Bytes as 'x.xx GiB' (or MiB below one GiB)."""
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def check_fits(abstract_tree: Any, mesh: jax.sharding.Mesh, limit: int | None, what: str) -> None:
  """Raises DoesNotFitError when the tree's arrays, placed by the rules on `mesh`, need more than a
  device's `limit` bytes (None: no check), naming the figures and the fsdp size that would hold them."""
  sizes = dict(mesh.shape)
  per_device, replicated = bytes_per_device(abstract_tree, sizes)
  if limit is None or per_device <= limit:
    return
  hint = (
    f"{gib(replicated)} of it in leaves no rule shards, which every device holds whole; no mesh holds them"
  )
  for factor in (2**k for k in range(1, 17)):
    bigger = dict(sizes, fsdp=sizes["fsdp"] * factor)
    need, _ = bytes_per_device(abstract_tree, bigger)
    if need <= limit:
      devices = math.prod(bigger.values())
      hint = (
        f"fsdp={bigger['fsdp']} (x tensor={sizes['tensor']} x data={sizes['data']}: {devices} devices) "
        f"holds them at {gib(need)} per device; set --mesh_fsdp={bigger['fsdp']} (evaluate, harness) or "
        f"config.mesh.fsdp={bigger['fsdp']} (main), on a larger slice or node if this one has fewer devices"
      )
      break
  raise errors.DoesNotFitError(
    f"{what} need {gib(per_device)} per device on mesh {describe_mesh(mesh)}, more than a device's "
    f"{gib(limit)} (and activations need more): {hint}."
  )


# ------------------------------------------------------------------------------------- activations
_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("lime_activation_mesh", default=None)


@contextlib.contextmanager
def activation_mesh(mesh: jax.sharding.Mesh | None):
  """While active, `constrain` pins activations on `mesh` (used while tracing the jitted steps)."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def constrain(x: jax.Array, axes: LogicalAxes) -> jax.Array:
  """`with_sharding_constraint` by logical axes; a no-op outside `activation_mesh` / `jax.set_mesh`."""
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    abstract = jax.sharding.get_abstract_mesh()
    if abstract.empty or not set(MESH_AXES) <= set(abstract.axis_names):
      return x
    mesh = abstract
  spec = logical_to_spec(axes, x.shape, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def with_activation_mesh(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`fn` traced with `activation_mesh(mesh)` active (wrap before `jax.jit`)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_mesh(mesh):
      return fn(*args, **kwargs)

  return wrapped


# ------------------------------------------------------------------------------------------- batch
def check_batch_divisible(
  global_batch: int, mesh: jax.sharding.Mesh, field: str = "train.batch_size"
) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(
      f"config.{field}={global_batch} must be divisible by data x fsdp = {shards} mesh "
      f"shards and by the process count {jax.process_count()}; change the batch size or "
      "config.mesh."
    )


def process_slice(global_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's rows p*B/P .. (p+1)*B/P-1 of a batch every process holds whole (eval batches)."""
  p, n = jax.process_index(), jax.process_count()
  return {k: v[p * len(v) // n : (p + 1) * len(v) // n] for k, v in global_batch.items()}


def check_process_rows(sharding: NamedSharding, global_batch: int) -> None:
  """Raises unless this process's devices hold exactly rows p*B/P .. (p+1)*B/P-1 of the batch (the rows
  the input pipeline reads for process p), e.g. when data x fsdp does not split across processes."""
  p, n = jax.process_index(), jax.process_count()
  if n == 1:
    return
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  rows = set()
  for (index,) in index_map.values():
    rows.update(range(*index.indices(global_batch)))
  want = set(range(p * global_batch // n, (p + 1) * global_batch // n))
  if rows != want:
    raise ValueError(
      f"process {p} of {n}: the batch sharding puts rows {min(rows)}..{max(rows)} ({len(rows)} rows) on "
      f"this process's devices, but the input pipeline reads rows {min(want)}..{max(want)}. Make "
      "config.mesh.data x config.mesh.fsdp a multiple of the process count (tensor inside a host)."
    )


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one global array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
