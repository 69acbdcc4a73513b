"""Orbax checkpoints of a run: the latest (to resume) and the best by dev CCC (to use).

The only module that knows the checkpoint layout, for training (save, resume) and for use
(`restore_model`: a checkpoint's parameters, `RunConfig` and `ModelInfo`, typed, on one device,
whatever number of devices trained it; no optimiser state is read). One abstract target,
`abstract_params`, describes the parameter tree for both. The on-disk layout:

    <workdir>/checkpoints/latest/<step>/{params, opt_state, data, run}
    <workdir>/checkpoints/best/<step>/{params, run}

`params` and `opt_state` are array trees (parameters stacked over seeds); `data` is every
process's grain iterator state (grain's Orbax handler, one file per process). A run whose
training data is on the devices saves there the state its host iterators would have at that
step (`SeedIterators.state_at`), so that either data path resumes from either's checkpoint; it
reads none back itself (its position in the data is the step); `run` is JSON: the
`RunConfig`, the `ModelInfo` (tasks, input sizes, normalisation statistics) and, for `best`, the
dev table.

Two managers instead of one with `best_fn`: a single manager keeping `max_to_keep` by best
metric deletes the newest checkpoint when it is not the best, and resuming would then go back to
an older step. Here `latest` keeps the newest only, and `best` is written only when dev CCC
improves. Orbax writes each step into a temporary folder and renames it when complete, so a
process killed mid-save leaves the previous checkpoint as the one found.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx
import grain
import jax
import orbax.checkpoint as ocp

from ccc_jax import models
from ccc_jax import sharding
from ccc_jax.config import ModelConfig, ModelInfo, RunConfig
from ccc_jax.errors import CheckpointError


def _manager(directory: str, *, async_save: bool, for_reading: bool = False):
  # For reading: keep every step and create nothing (orbax's read_only mode warns on each use).
  # Each manager its own barrier names: `latest` and `best` finalise their async saves in
  # threads that may overlap, and with orbax's shared default names a multi-process run failed
  # with "Barrier ThreadSaveMultiHostValueHolder:set_value_start is already ongoing".
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if for_reading else 1, create=not for_reading,
      enable_async_checkpointing=async_save,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=os.path.basename(directory.rstrip('/'))))
  handlers = {'params': ocp.StandardCheckpointHandler(),
              'opt_state': ocp.StandardCheckpointHandler(),
              'data': grain.checkpoint.CheckpointHandler(),
              'run': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _abstract(tree: Any, placement) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement), tree)


def abstract_model(model_config: ModelConfig, info: ModelInfo) -> tuple[Any, Any]:
  """`(graphdef, params)` of one seed's model, shapes and dtypes only (nothing is computed)."""
  graphdef, params, rest = nnx.split(
      nnx.eval_shape(lambda: models.AVDNet(model_config, num_tasks=len(info.tasks),
                                           input_dims=info.input_dims, rngs=nnx.Rngs(0))),
      nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise TypeError('the model holds non-parameter state; the functional train step needs none')
  return graphdef, params


def abstract_params(config: RunConfig, info: ModelInfo, placement=None) -> tuple[Any, Any]:
  """`(graphdef, abstract params stacked over config.seeds)`: the restore target, placed with
  `placement` (replicated on a mesh to resume, one device for inference)."""
  graphdef, params = abstract_model(config.model, info)
  stacked = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((len(config.seeds),) + x.shape, x.dtype, sharding=placement),
      params)
  return graphdef, stacked


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

  def save_latest(self, step: int, state, data_state: bytes, run_info: dict) -> None:
    """Saves asynchronously; `state` must not be modified afterwards (pass a copy).
    `data_state`: the data iterators' position now (`SeedIterators.get_state()`), captured
    before the call, since the async save may read its item after training has drawn further
    batches."""
    self.latest.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data=grain.checkpoint.CheckpointSave(_IteratorState(data_state)),
        run=ocp.args.JsonSave(run_info)))

  def save_best(self, step: int, params, run_info: dict, score: float) -> None:
    # Wait for an earlier best save of this step to finish before replacing anything.
    self.best.wait_until_finished()
    if self.best.latest_step() == step:
      return
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        run=ocp.args.JsonSave({**run_info, 'dev_ccc': score})))

  def best_run_info(self) -> dict | None:
    """The best checkpoint's run record (`dev_ccc`, `step`, `dev`, ...), None before one."""
    step = self.best.latest_step()
    if step is None:
      return None
    return self.best.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']

  def restore_run_info(self, step: int) -> dict:
    return self.latest.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']

  def restore_training(self, step: int, state, iterators, replicated, config: RunConfig,
                       info: ModelInfo):
    """Restores params, optimiser state (placed with `replicated`) and the iterators (None:
    the run reads its data by step, and the saved position is not read)."""
    items = dict(
        params=ocp.args.StandardRestore(abstract_params(config, info, replicated)[1]),
        opt_state=ocp.args.StandardRestore(_abstract(state.opt_state, replicated)))
    if iterators is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(iterators)
    restored = self.latest.restore(step, args=ocp.args.Composite(**items))
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
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CheckpointError(f'{workdir}: is a file, not a training workdir')
  root = os.path.join(os.path.abspath(workdir), 'checkpoints')
  kind = 'best' if which == 'best' else 'latest'
  directory = os.path.join(root, kind)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{workdir} has no {kind} checkpoint (no folder {directory}); '
                          'train first with python -m launch.train')
  manager = _manager(directory, async_save=False, for_reading=True)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f'{directory} holds no complete checkpoint')
  if which in ('best', 'latest'):
    return manager, max(steps)
  try:
    step = int(which)
  except ValueError:
    raise CheckpointError(f"checkpoint must be 'best', 'latest' or a step number, got "
                          f'{which!r}') from None
  if step not in steps:
    raise CheckpointError(f'{directory} has no step {step}; it has {sorted(steps)}')
  return manager, step


@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """A checkpoint ready for inference.

  Attributes:
    workdir: the run's workdir.
    step: the checkpoint's training step (post-processing is saved per step).
    graphdef: the model's graph definition.
    params: parameters stacked over seeds (leading axis), on this process's first device.
    info: what inference needs besides the parameters (tasks, input sizes, statistics, window).
    config: the run's config as saved with the checkpoint.
  """
  workdir: str
  step: int
  graphdef: Any
  params: Any
  info: ModelInfo
  config: RunConfig

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.info.tasks

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.config.model.modalities

  @property
  def num_seeds(self) -> int:
    return len(self.config.seeds)


def restore_model(workdir: str, checkpoint: str | int = 'best') -> RestoredModel:
  """Restores the parameters of `checkpoint` ('best', 'latest' or a step) of `workdir`.

  Raises:
    CheckpointError: the workdir has no such checkpoint, or `checkpoint` is not 'best',
      'latest' or a number.
  """
  manager, step = resolve(workdir, str(checkpoint))
  try:
    run_info = manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']
    config = RunConfig.from_mapping(run_info['config'])
    info = ModelInfo.from_json(run_info['model_info'])
    graphdef, abstract = abstract_params(config, info, sharding.single_device())
    params = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))['params']
  finally:
    manager.close()
  return RestoredModel(workdir=os.path.abspath(workdir), step=int(step), graphdef=graphdef,
                       params=params, info=info, config=config)
