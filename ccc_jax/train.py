"""Training: the data-parallel train step, the training loop, periodic dev evaluation.

Owns how a run goes from a config to trained parameters. The train step is one pure function of
(state, batch), written as a per-device program with explicit collectives over the `data` axis:
the CCC statistics are summed across devices inside the loss (`axis_name`), and the gradients are
averaged (`pmean`). `ccc_jax.sharding.DataParallel` runs it under `jax.shard_map` (default) or
`jax.pmap` (`config.parallel`).

A run trains `len(config.seeds)` models at once, vectorised over a leading seed axis with
`jax.vmap`: one seed is the ordinary case, several seeds share one compiled program (each with
its own initialisation and data order). Stacked parameters are what checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import input_pipeline
from ccc_jax import losses
from ccc_jax import models
from ccc_jax import sharding


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What inference needs besides the parameters: saved with every checkpoint."""
  tasks: tuple[str, ...]
  input_dims: dict[str, int]
  stats: dict[str, Any]
  window: int
  hop: int
  sample_rate: int
  label_rate: int
  dataset: str

  @classmethod
  def from_corpus(cls, corpus: input_pipeline.Corpus, tasks) -> 'ModelInfo':
    meta = corpus.metadata
    return cls(tasks=tuple(tasks), input_dims=corpus.input_dims(), stats=corpus.stats,
               window=corpus.window, hop=int(meta['hop']),
               sample_rate=int(meta.get('sample_rate', 16000)),
               label_rate=int(meta.get('label_rate', 25)), dataset=corpus.name)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> 'ModelInfo':
    data = dict(data)
    data['tasks'] = tuple(data['tasks'])
    return cls(**data)


def _new_model(model_config, info: ModelInfo, seed) -> models.AVDNet:
  return models.AVDNet(model_config, num_tasks=len(info.tasks), input_dims=info.input_dims,
                       rngs=nnx.Rngs(seed))


def abstract_model(model_config, info: ModelInfo) -> tuple[Any, Any]:
  """`(graphdef, params)` with shapes and dtypes only (no computation): for restoring."""
  graphdef, params, rest = nnx.split(
      nnx.eval_shape(lambda: _new_model(model_config, info, 0)), nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise TypeError('the model holds non-parameter state; the functional train step needs none')
  return graphdef, params


def init_params(model_config, info: ModelInfo, seeds) -> tuple[Any, Any]:
  """Graph definition and parameters stacked over `seeds` (leading axis).

  Each seed is initialised by one compiled program (eager initialisation compiles op by op and
  takes seconds), cached per model config, so a seed gets the same values in any stack. Not
  `vmap` over seeds: with the default model and two or more seeds, the vmapped initialisation
  never finished on XLA:CPU (jax 0.10.2; every thread waiting, no CPU used).
  """
  graphdef, _ = abstract_model(model_config, info)
  init = _compiled_init(model_config.to_json(), json.dumps(info.input_dims, sort_keys=True),
                        len(info.tasks))
  per_seed = [init(jnp.asarray(seed, jnp.uint32)) for seed in seeds]
  return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)


@functools.lru_cache(maxsize=16)
def _compiled_init(model_config_json: str, input_dims_json: str, num_tasks: int):
  model_config = ml_collections.ConfigDict(json.loads(model_config_json))
  input_dims = json.loads(input_dims_json)

  @jax.jit
  def init(seed):
    model = models.AVDNet(model_config, num_tasks=num_tasks, input_dims=input_dims,
                          rngs=nnx.Rngs(jax.random.key(seed)))
    return nnx.split(model, nnx.Param, ...)[1]
  return init


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay, after global-norm gradient clipping."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
      decay_steps=max(config.num_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.end_learning_rate_fraction)
  return optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                     optax.adamw(schedule, weight_decay=opt.weight_decay))


def apply_model(graphdef, params, inputs):
  return nnx.merge(graphdef, params)(inputs)


def make_per_device_step(graphdef, optimizer: optax.GradientTransformation, loss_kind: str,
                         task_weights) -> Callable:
  """The train step for one device's shard of the batch, for every seed at once.

  `state` holds stacked seeds; `batch` arrays are `[seeds, per_device_batch, ...]`.
  """
  if loss_kind not in losses.LOSS_KINDS:
    raise ValueError(f'unknown loss {loss_kind!r}; expected one of {losses.LOSS_KINDS}')

  def one_seed(state: TrainState, batch):
    def objective(params):
      predictions = apply_model(graphdef, params, batch)
      total, per_task = losses.loss(loss_kind, predictions, batch['labels'], batch['mask'],
                                    task_weights, axis_name=sharding.DATA_AXIS)
      return total, per_task
    (total, per_task), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    # Every device holds the same global loss; the mean of their gradients is the gradient of
    # the global-batch objective (tests/test_train.py checks it against one device).
    grads = jax.lax.pmean(grads, sharding.DATA_AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': total, 'per_task_loss': per_task, 'grad_norm': optax.global_norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.vmap(one_seed)


def compiled_train_step(graphdef, config, parallel: sharding.DataParallel) -> Callable:
  """The data-parallel train step `(state, batch) -> (state, metrics)`, donating the state.

  Cached: the runs of an experiment grid (and of a test session) that share a model, optimiser
  and loss share one compiled program instead of compiling it per run.
  """
  weights = None if config.task_weights is None else tuple(config.task_weights)
  return _compiled_train_step(graphdef, config.optimizer.to_json(), config.num_steps,
                              config.loss, weights, parallel)


@functools.lru_cache(maxsize=8)
def _compiled_train_step(graphdef, optimizer_json: str, num_steps: int, loss_kind: str,
                         task_weights, parallel: sharding.DataParallel) -> Callable:
  optimizer = make_optimizer(ml_collections.ConfigDict(
      {'optimizer': json.loads(optimizer_json), 'num_steps': num_steps}))
  return parallel.run(make_per_device_step(graphdef, optimizer, loss_kind, task_weights),
                      batch_axis=1, donate_argnums=(0,))


def create_state(config, info: ModelInfo) -> tuple[Any, TrainState, optax.GradientTransformation]:
  graphdef, params = init_params(config.model, info, config.seeds)
  optimizer = make_optimizer(config)
  opt_state = jax.jit(jax.vmap(optimizer.init))(params)
  step = jnp.zeros((len(config.seeds),), jnp.int32)
  return graphdef, TrainState(step=step, params=params, opt_state=opt_state), optimizer


def seed_iterators(config, corpus: input_pipeline.Corpus) -> input_pipeline.SeedIterators:
  iterators = []
  for seed in config.seeds:
    dataset = input_pipeline.train_dataset(
        corpus, tasks=config.tasks, modalities=config.model.modalities,
        global_batch=config.global_batch, seed=int(seed), process_index=jax.process_index(),
        process_count=jax.process_count())
    iterators.append(input_pipeline.train_iterator(
        dataset, num_workers=config.data_workers, prefetch=config.prefetch))
  return input_pipeline.SeedIterators(iterators)


# Keys that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'data_workers',
                     'prefetch', 'eval_batch')


def _check_same_run(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  current = json.loads(config.to_json())
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
  if differing:
    details = '; '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differing)
    raise ValueError(f'{workdir} holds a run with another config ({details}); use a new workdir '
                     'or the saved config')


class _MetricWriter:
  """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files, from process 0."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
      self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, kind: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({'step': step, 'kind': kind, **values}) + '\n')
    self._jsonl.flush()
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tensorboard.add_scalar(f'{kind}/{name}', value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       corpus: input_pipeline.Corpus | None = None) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint if any), evaluates on dev, saves.

  Returns the final summary: step, seconds, steps per second, the last and best dev tables.
  """
  os.makedirs(workdir, exist_ok=True)
  corpus = corpus or input_pipeline.open_corpus(config.dataset, config.data_dir)
  tasks = tuple(config.tasks)
  corpus.task_indices(tasks)  # unknown task names fail here, with the corpus's task list
  info = ModelInfo.from_corpus(corpus, tasks)
  parallel = sharding.DataParallel(sharding.make_mesh(), config.parallel)
  parallel.check_batch_size(config.global_batch)

  graphdef, state, _ = create_state(config, info)
  iterators = seed_iterators(config, corpus)
  store = checkpoints.Checkpoints(workdir)
  best_score = -math.inf
  latest = store.latest_step()
  if latest is not None:
    saved = store.restore_run_info(latest)
    _check_same_run(saved['config'], config, workdir)
    state = store.restore_training(latest, state, iterators, parallel.mesh)
    best_score = store.best_score()
    _log(f'resumed from {workdir} at step {latest}')
  run_info = {'config': json.loads(config.to_json()), 'model_info': info.to_json()}

  state = parallel.put_state(state)
  step_fn = compiled_train_step(graphdef, config, parallel)
  writer = _MetricWriter(workdir)
  step = int(latest or 0)
  pending: list[tuple[int, Any]] = []  # device metrics not yet checked for NaN
  last_eval: dict[str, Any] | None = None
  start_time, start_step, compile_seconds = time.time(), step, None
  try:
    while step < config.num_steps:
      batch = parallel.put_batch(next(iterators), axis=1)
      tic = time.time()
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append((step, metrics))
      if compile_seconds is None:
        jax.block_until_ready(metrics)
        compile_seconds = time.time() - tic
        start_time, start_step = time.time(), step
      final = step == config.num_steps
      evaluate = step % config.eval_every == 0 or final
      save = step % config.checkpoint_every == 0 or final
      if evaluate or save or step % config.log_every == 0:
        values = _check_finite(pending)  # before anything is evaluated or saved
        pending = []
        if evaluate:
          last_eval = evaluate_dev(config, graphdef, parallel.local_copy(state.params), corpus,
                                   tasks)
          writer.write(step, 'dev', _flatten(last_eval))
          score = last_eval['mean']['ccc_concat']
          if math.isfinite(score) and score > best_score:
            best_score = score
            store.save_best(step, _snapshot(parallel.get_state(state).params),
                            {**run_info, 'step': step, 'dev': last_eval}, score)
        if save:
          store.save_latest(step, _snapshot(parallel.get_state(state)), iterators,
                            {**run_info, 'step': step})
        rate = (step - start_step) / max(time.time() - start_time, 1e-9)
        writer.write(step, 'train', {**values, 'steps_per_second': rate})
        dev = '' if last_eval is None else f" | dev CCC {last_eval['mean']['ccc_concat']:.3f}"
        _log(f"step {step}/{config.num_steps} | loss {values['loss']:.4f} | "
             f'{rate:.2f} steps/s{dev}')
    if last_eval is None:  # the workdir's run was already complete: report it
      last_eval = evaluate_dev(config, graphdef, parallel.local_copy(state.params), corpus, tasks)
    store.wait()
  finally:
    writer.close()
    store.close()
  seconds = time.time() - start_time
  summary = {
      'step': step, 'compile_seconds': compile_seconds,
      'steps_per_second': (step - start_step) / max(seconds, 1e-9),
      'dev': last_eval, 'best_dev_ccc': best_score, 'tasks': list(tasks),
      'seeds': list(config.seeds)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return summary


@jax.jit
def _snapshot(tree):
  """Fresh buffers for an async save: the train step donates (reuses) the state's buffers."""
  return jax.tree.map(jnp.copy, tree)


def _check_finite(pending) -> dict[str, float]:
  """Raises `TrainingDiverged` naming the first step whose loss is not finite."""
  for step, metrics in pending:
    loss = np.asarray(jax.device_get(metrics['loss']))
    if not np.all(np.isfinite(loss)):
      raise TrainingDiverged(
          f'loss is {loss.tolist()} at step {step}: training stopped; the last good checkpoint '
          'is kept. Lower optimizer.learning_rate or check the data for NaN.')
  last = jax.device_get(pending[-1][1])
  values = {'loss': float(np.mean(last['loss'])), 'grad_norm': float(np.mean(last['grad_norm']))}
  per_task = np.asarray(last['per_task_loss'])
  per_task = per_task.reshape(-1, per_task.shape[-1]).mean(axis=0)  # over seeds (and pmap devices)
  values.update({f'loss_task{k}': float(v) for k, v in enumerate(per_task)})
  return values


def evaluate_dev(config, graphdef, params, corpus, tasks) -> dict[str, Any]:
  """Dev metrics per seed and their mean over seeds: `{task: {...}, 'mean': {...}, 'seeds': [...]}`."""
  predictions = evaluation.predict_split(graphdef, params, corpus, 'dev', config.model.modalities,
                                         tasks, batch_size=config.eval_batch)
  return evaluation.score_seeds(predictions, tasks)


def _flatten(table: dict[str, Any]) -> dict[str, float]:
  flat = {}
  for row, columns in table.items():
    if isinstance(columns, dict):
      flat.update({f'{row}/{name}': value for name, value in columns.items()})
  return flat

