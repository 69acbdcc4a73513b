"""Orbax checkpoints of a run: the latest (to resume) and the best by dev CCC (to use).

Owns the on-disk layout of a workdir's checkpoints:

    <workdir>/checkpoints/latest/<step>/{params, opt_state, data, run}
    <workdir>/checkpoints/best/<step>/{params, run}

`params` and `opt_state` are array trees; `data` is every process's grain iterator state (grain's
Orbax handler, one file per process); `run` is JSON: the config, what inference needs
(`ModelInfo`: tasks, input sizes, normalisation statistics) and, for `best`, the dev table.

Two managers instead of one with `best_fn`: a single manager keeping `max_to_keep` by best
metric deletes the newest checkpoint when it is not the best, and resuming would then go back to
an older step. Here `latest` keeps the newest only, and `best` is written only when dev CCC
improves. Orbax writes each step into a temporary folder and renames it when complete, so a
process killed mid-save leaves the previous checkpoint as the one found.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
import orbax.checkpoint as ocp


def _manager(directory: str, *, async_save: bool, for_reading: bool = False):
  # For reading: keep every step and create nothing (orbax's read_only mode warns on each use).
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if for_reading else 1, create=not for_reading,
      enable_async_checkpointing=async_save)
  handlers = {'params': ocp.StandardCheckpointHandler(),
              'opt_state': ocp.StandardCheckpointHandler(),
              'data': grain.checkpoint.CheckpointHandler(),
              'run': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _abstract(tree: Any, sharding) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class _IteratorState:
  """A data iterator's state captured at save time, in the form grain's handler writes."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


class Checkpoints:
  """The latest and the best checkpoint of one workdir."""

  def __init__(self, workdir: str, *, async_save: bool = True):
    root = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.latest = _manager(os.path.join(root, 'latest'), async_save=async_save)
    self.best = _manager(os.path.join(root, 'best'), async_save=async_save)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state, iterators, run_info: dict) -> None:
    """Saves asynchronously; `state` must not be modified afterwards (pass a copy)."""
    self.latest.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        # The iterators' position now: the async save may read its item after training has
        # drawn further batches.
        data=grain.checkpoint.CheckpointSave(_IteratorState(iterators.get_state())),
        run=ocp.args.JsonSave(run_info)))

  def save_best(self, step: int, params, run_info: dict, score: float) -> None:
    # Wait for an earlier best save of this step to finish before replacing anything.
    self.best.wait_until_finished()
    if self.best.latest_step() == step:
      return
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        run=ocp.args.JsonSave({**run_info, 'dev_ccc': score})))

  def best_score(self) -> float:
    step = self.best.latest_step()
    if step is None:
      return -float('inf')
    return float(self.best.restore(step, args=ocp.args.Composite(
        run=ocp.args.JsonRestore()))['run']['dev_ccc'])

  def restore_run_info(self, step: int) -> dict:
    return self.latest.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']

  def restore_training(self, step: int, state, iterators, mesh):
    """Restores params, optimiser state (replicated on `mesh`) and the iterators, in place."""
    replicated = NamedSharding(mesh, P())
    restored = self.latest.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(state.params, replicated)),
        opt_state=ocp.args.StandardRestore(_abstract(state.opt_state, replicated)),
        data=grain.checkpoint.CheckpointRestore(iterators)))
    return state.replace(step=jax.numpy.full_like(state.step, step), params=restored['params'],
                         opt_state=restored['opt_state'])

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def resolve(workdir: str, which: str = 'best') -> tuple[ocp.CheckpointManager, int]:
  """The manager and step for `which`: 'best', 'latest', or a step number of the latest kind."""
  root = os.path.join(os.path.abspath(workdir), 'checkpoints')
  kind = 'best' if which == 'best' else 'latest'
  directory = os.path.join(root, kind)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{workdir} has no {kind} checkpoint (no folder {directory}); '
                            'train first with python -m launch.train')
  manager = _manager(directory, async_save=False, for_reading=True)
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f'{directory} holds no complete checkpoint')
  if which in ('best', 'latest'):
    return manager, max(steps)
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}") from None
  if step not in steps:
    raise FileNotFoundError(f'{directory} has no step {step}; it has {sorted(steps)}')
  return manager, step


def restore_params(workdir: str, which: str, abstract_params_fn) -> tuple[Any, dict]:
  """`(params, run_info)` of a checkpoint, on this process's first device.

  `abstract_params_fn(run_info)` gives the parameter tree's structure (shapes and dtypes) for
  the saved config, so a checkpoint trained on any number of devices loads on one.
  """
  manager, step = resolve(workdir, which)
  run_info = manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']
  device = SingleDeviceSharding(jax.local_devices()[0])
  abstract = _abstract(abstract_params_fn(run_info), device)
  params = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))['params']
  manager.close()
  return params, {**run_info, 'step': step}
