"""How arrays are laid out on devices: the one module that decides it.

Data parallelism over a 1-D mesh whose axis is `DATA_AXIS`. A per-device program (written with
explicit collectives over `DATA_AXIS`) runs in one of two ways:

- `shard_map` (the default): model and optimiser state are global arrays replicated on the mesh,
  the batch is a global array split along its leading axis. Multi-host ready: each process
  contributes its local slice with `jax.make_array_from_process_local_data`.
- `pmap`: the literal pmap programming model for users who want it. State carries a leading
  device axis; the batch is reshaped to `[local_devices, per_device, ...]`. Since JAX 0.8 pmap is
  itself implemented on shard_map, so both run the same per-device program.

Training data on the devices (`RunConfig.data_placement`): the training split is replicated on
every device (`put_resident`), and each device gathers its own slice of each global batch from
its copy (`gather`, no communication); `choose_data_placement` decides whether the split goes
there, against `resident_budget`.

Evaluation and inference run on one device, `single_device()`. Everything else (trainer,
checkpoint restore, evaluation, experiment grid) takes its shardings from here and never builds
one itself.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from ccc_jax.config import DATA_PLACEMENTS, PARALLEL_MODES

DATA_AXIS = 'data'
# The share of memory the device-resident training split may take under 'auto'. Each device
# holds a whole copy, and the rest of its memory serves the state (parameters, optimiser, per
# seed), the step's activations and XLA's workspace: a quarter leaves those three quarters.
# RECOLA (about 0.5 GB prepared) fits a 16 GB accelerator with room to spare, CreativeIT (a few
# GB) one of 24 GB and more. On the CPU backend the devices' memory is the host's, and every
# (fake) device holds a copy: the budget is a quarter of the host's memory over their number.
RESIDENT_MEMORY_FRACTION = 0.25


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (all devices of all processes by default)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def single_device() -> SingleDeviceSharding:
  """This process's first device: where evaluation and inference run."""
  return SingleDeviceSharding(jax.local_devices()[0])


@dataclasses.dataclass(frozen=True)
class DataPlacement:
  """Where the training split is read from, and the sizes that decided it."""
  kind: str  # 'device' or 'host'
  requested: str  # RunConfig.data_placement
  split_bytes: int  # the resident split (one copy)
  budget_bytes: int  # what one copy may take under 'auto'
  memory: str  # what the budget is a share of

  def describe(self) -> str:
    where = ('on the devices (uploaded once, batches gathered there)' if self.kind == 'device'
             else 'from the host pipeline (grain)')
    relation = '<=' if self.split_bytes <= self.budget_bytes else '>'
    return (f'training data {where}: data_placement={self.requested}, train split '
            f'{_size(self.split_bytes)} per copy {relation} budget {_size(self.budget_bytes)} '
            f'({RESIDENT_MEMORY_FRACTION:.0%} of {self.memory})')


def resident_budget(devices) -> tuple[int, str]:
  """`(bytes, what of)`: how much one copy of the resident split may take on `devices`."""
  device = list(devices)[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and stats.get('bytes_limit'):
    limit = int(stats['bytes_limit'])
    return int(RESIDENT_MEMORY_FRACTION * limit), f'{device.device_kind} memory {_size(limit)}'
  host = _host_memory_bytes()
  copies = len([d for d in devices if d.process_index == jax.process_index()])
  return (int(RESIDENT_MEMORY_FRACTION * host / copies),
          f'host memory {_size(host)} over {copies} CPU device(s)')


def _host_memory_bytes() -> int:
  """Physical memory, or the container's limit when it sets a lower one (cgroup v2)."""
  total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  try:
    with open('/sys/fs/cgroup/memory.max') as f:
      limit = f.read().strip()
    if limit.isdigit():
      total = min(total, int(limit))
  except OSError:
    pass
  return total


def choose_data_placement(requested: str, split_bytes: int, devices,
                          budget: tuple[int, str] | None = None) -> DataPlacement:
  """'device' or 'host' for `RunConfig.data_placement` = `requested`: 'auto' takes the devices
  when one copy of the split fits `resident_budget` (or `budget`)."""
  if requested not in DATA_PLACEMENTS:
    raise ValueError(f'unknown data placement {requested!r}; expected one of {DATA_PLACEMENTS}')
  budget_bytes, memory = budget or resident_budget(devices)
  kind = requested
  if requested == 'auto':
    kind = 'device' if split_bytes <= budget_bytes else 'host'
  return DataPlacement(kind, requested, int(split_bytes), int(budget_bytes), memory)


def _size(num_bytes: float) -> str:
  for unit in ('B', 'KB', 'MB', 'GB'):
    if num_bytes < 1000 or unit == 'GB':
      return f'{num_bytes:.0f} {unit}' if unit == 'B' else f'{num_bytes:.1f} {unit}'
    num_bytes /= 1000
  raise AssertionError('unreachable')


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Places state and batches on a mesh and runs per-device programs over it."""
  mesh: Mesh
  mode: str = 'shard_map'

  def __post_init__(self):
    if self.mode not in PARALLEL_MODES:
      raise ValueError(f'unknown parallel mode {self.mode!r}; expected one of {PARALLEL_MODES}')

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def local_devices(self) -> list:
    return [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

  def check_batch_size(self, global_batch: int) -> None:
    if global_batch % self.num_devices:
      raise ValueError(f'global batch {global_batch} is not divisible by the {self.num_devices} '
                       'devices of the mesh')

  # State: replicated.
  @property
  def replicated(self) -> NamedSharding:
    """The sharding of state as `shard_map` mode holds it (and as checkpoints restore it)."""
    return NamedSharding(self.mesh, P())

  def put_state(self, state: Any) -> Any:
    """Replicates a host or single-device pytree on every device of the mesh."""
    if self.mode == 'pmap':
      devices = self.local_devices
      stacked = NamedSharding(Mesh(np.asarray(devices), ('local',)), P('local'))
      return jax.tree.map(
          lambda x: jax.device_put(jnp.stack([jnp.asarray(x)] * len(devices)), stacked), state)
    return jax.device_put(state, self.replicated)

  def get_state(self, state: Any) -> Any:
    """The state as plain (replicated) arrays without a device axis, for saving or inference."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x[0], state)
    return state

  def local_copy(self, state: Any) -> Any:
    """This process's copy of replicated state as arrays on its first device (for evaluation)."""
    device = self.local_devices[0]
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: jax.device_put(x.addressable_data(0).reshape(x.shape[1:]),
                                                   device), state)
    return jax.tree.map(lambda x: x.addressable_data(0), state)

  # Batches: split along one axis (the leading one, or 1 when a seed axis comes first).
  def put_batch(self, local_batch: dict[str, np.ndarray], axis: int = 0) -> dict[str, jax.Array]:
    """Places this process's slice of the global batch on the mesh, split along `axis`."""
    if self.mode == 'pmap':
      n = len(self.local_devices)

      def to_devices(x):
        shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
        return np.moveaxis(x.reshape(shape), axis, 0)
      return jax.tree.map(to_devices, local_batch)
    sharding = NamedSharding(self.mesh, P(*([None] * axis), DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        local_batch)

  # The training split on the devices: a whole copy on each.
  def put_resident(self, tree: Any) -> Any:
    """Copies a host pytree (the resident training split) whole to every device of the mesh;
    every process passes the same values. In `pmap` mode with a leading device axis."""
    if self.mode == 'pmap':
      devices = self.local_devices
      stacked = NamedSharding(Mesh(np.asarray(devices), ('local',)), P('local'))

      def put(x):
        x = np.asarray(x)
        return jax.make_array_from_single_device_arrays(
            (len(devices),) + x.shape, stacked, [jax.device_put(x[None], d) for d in devices])
      return jax.tree.map(put, tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), self.replicated,
                                               lambda index: np.asarray(x)[index]), tree)

  def gather(self, per_device_fn: Callable) -> Callable:
    """Compiles `per_device_fn(resident, ids) -> batch` over the mesh: `resident` from
    `put_resident`, `ids` from `put_batch(..., axis=1)`; the batch comes out split along axis 1
    as `put_batch(..., axis=1)` places one, ready for the train step."""
    if self.mode == 'pmap':
      return jax.pmap(per_device_fn, axis_name=DATA_AXIS, devices=self.local_devices)
    split = P(None, DATA_AXIS)
    return jax.jit(jax.shard_map(per_device_fn, mesh=self.mesh, in_specs=(P(), split),
                                 out_specs=split))

  def run(self, per_device_fn: Callable, *, num_args: int = 2, batch_argnums=(1,),
          batch_axis: int = 0, donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Compiles `per_device_fn(*args)` as a data-parallel program over the mesh.

    Arguments at `batch_argnums` are split across devices along `batch_axis` (as `put_batch`
    places them); the others, and every output, are replicated (the per-device program makes
    them equal with collectives over `DATA_AXIS`). Arguments come from `put_state`/`put_batch`.
    """
    if self.mode == 'pmap':
      # Every argument carries the device axis first (put_state stacks, put_batch moves it).
      return jax.pmap(per_device_fn, axis_name=DATA_AXIS, devices=self.local_devices,
                      donate_argnums=donate_argnums)
    batch_spec = P(*([None] * batch_axis), DATA_AXIS)
    specs = tuple(batch_spec if i in batch_argnums else P() for i in range(num_args))
    return jax.jit(jax.shard_map(per_device_fn, mesh=self.mesh, in_specs=specs, out_specs=P()),
                   donate_argnums=donate_argnums)
