"""Training: the data-parallel train step, the training loop, periodic dev evaluation.

Owns how a run goes from a config to trained parameters. The train step is one pure function of
(state, batch), written as a per-device program with explicit collectives over the `data` axis:
the CCC statistics are summed across devices inside the loss (`axis_name`), and the gradients are
averaged (`pmean`). `ccc_jax.sharding.DataParallel` runs it under `jax.shard_map` (default) or
`jax.pmap` (`config.parallel`).

The training data reaches the step by one of two paths that give the same batches
(`config.data_placement`, decided and logged at the start of a run): the grain pipeline on the
host (`_HostFeed`), or the whole training split uploaded to the devices once, each global batch
gathered there by the pipeline's own order (`_DeviceFeed`), with nothing but the batch's window
numbers crossing from the host per step.

A run trains `len(config.seeds)` models at once, vectorised over a leading seed axis with
`jax.vmap`: one seed is the ordinary case, several seeds share one compiled program (each with
its own initialisation and data order). Stacked parameters are what checkpoints hold.
"""

from __future__ import annotations

import errno
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
import numpy as np
import optax

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import files
from ccc_jax import input_pipeline
from ccc_jax import losses
from ccc_jax import models
from ccc_jax import sharding
from ccc_jax import windows
from ccc_jax.config import (AugmentConfig, ModelConfig, ModelInfo, OptimizerConfig, RunConfig,
                            leaf_differences)
from ccc_jax.errors import CheckpointError, Interrupted, OutputError, TrainingDiverged


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


def init_params(model_config: ModelConfig, info: ModelInfo, seeds) -> tuple[Any, Any]:
  """Graph definition and parameters stacked over `seeds` (leading axis).

  Each seed is initialised by one compiled program (eager initialisation compiles op by op and
  takes seconds), cached per model config, so a seed gets the same values in any stack. Not
  `vmap` over seeds: with the default model and two or more seeds, the vmapped initialisation
  never finished on XLA:CPU (jax 0.10.2; every thread waiting, no CPU used).
  """
  graphdef, _ = checkpoints.abstract_model(model_config, info)
  init = _compiled_init(model_config, info.input_dims_key, len(info.tasks))
  per_seed = [init(jnp.asarray(seed, jnp.uint32)) for seed in seeds]
  return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *per_seed)


@functools.lru_cache(maxsize=16)
def _compiled_init(model_config: ModelConfig, input_dims: tuple[tuple[str, int], ...],
                   num_tasks: int):
  @jax.jit
  def init(seed):
    model = models.AVDNet(model_config, num_tasks=num_tasks, input_dims=dict(input_dims),
                          rngs=nnx.Rngs(jax.random.key(seed)))
    return nnx.split(model, nnx.Param, ...)[1]
  return init


def make_optimizer(optimizer: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay over `optimizer.decay_steps` (default
  `num_steps`), after global-norm gradient clipping."""
  decay_steps = optimizer.decay_steps or num_steps
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optimizer.learning_rate, warmup_steps=optimizer.warmup_steps,
      decay_steps=max(decay_steps, optimizer.warmup_steps + 1),
      end_value=optimizer.learning_rate * optimizer.end_learning_rate_fraction)
  return optax.chain(optax.clip_by_global_norm(optimizer.clip_norm),
                     optax.adamw(schedule, weight_decay=optimizer.weight_decay))


def apply_model(graphdef, params, inputs, keys=None):
  return nnx.merge(graphdef, params)(inputs, keys)


def identify_examples(batch: dict[str, np.ndarray], seeds, first: int = 0) -> dict[str, np.ndarray]:
  """Adds `seed` and `example` (`[seeds, local_batch]` int32) to a host batch: the seed of each
  row and its place in the global batch (this process's slice starts at `first`). The train
  step draws each window's random numbers from them and the step number alone."""
  num_seeds, local_batch = np.shape(next(iter(batch.values())))[:2]
  if num_seeds != len(seeds):
    raise ValueError(f'batch has {num_seeds} seeds, the run {len(seeds)}')
  shape = (num_seeds, local_batch)
  return {**batch,
          'seed': np.broadcast_to(np.asarray(seeds, np.int32)[:, None], shape).copy(),
          'example': np.broadcast_to(first + np.arange(local_batch, dtype=np.int32), shape).copy()}


def example_keys(seed: jax.Array, step: jax.Array, example: jax.Array) -> jax.Array:
  """One key per window `[B, 2]` from the seed, the step and the window's global index."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.vmap(lambda index: jax.random.fold_in(base, index))(example)


def augment_audio(audio: jax.Array, keys: jax.Array, augment: AugmentConfig,
                  sample_rate: int = 16000) -> jax.Array:
  """`augment`'s gain, noise and circular shift of each window's normalised waveform [B, N]."""
  def one(wave, key):
    gain_key, snr_key, noise_key, shift_key = jax.random.split(key, 4)
    if augment.shift_ms:
      limit = int(round(augment.shift_ms * sample_rate / 1000))
      wave = jnp.roll(wave, jax.random.randint(shift_key, (), -limit, limit + 1))
    if augment.gain_db:
      gain_db = jax.random.uniform(gain_key, (), minval=-augment.gain_db, maxval=augment.gain_db)
      wave = wave * 10.0 ** (gain_db / 20.0)
    if augment.noise_snr_db:
      low, high = augment.noise_snr_db
      snr_db = jax.random.uniform(snr_key, (), minval=low, maxval=high)
      power = jnp.mean(wave ** 2)
      wave = wave + jnp.sqrt(power / 10.0 ** (snr_db / 10.0)) * jax.random.normal(
          noise_key, wave.shape)
    return wave
  return jax.vmap(one)(audio, keys)


def make_per_device_step(graphdef, optimizer: optax.GradientTransformation, loss_kind: str,
                         task_weights, augment: AugmentConfig = AugmentConfig(),
                         label_delay: int = 0) -> Callable:
  """The train step for one device's shard of the batch, for every seed at once.

  `state` holds stacked seeds; `batch` arrays are `[seeds, per_device_batch, ...]`, with `seed`
  and `example` from `identify_examples`. With `label_delay` d, output frame i is scored against
  label frame i + d (`losses.delay_aligned`).
  """

  def one_seed(state: TrainState, batch):
    keys = example_keys(batch['seed'][0], state.step, batch['example'])
    if augment.active and 'audio' in batch:
      batch = {**batch, 'audio': augment_audio(batch['audio'], keys, augment)}
    # Other draws than the augmentation's (which used `keys` itself).
    model_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1 << 20))(keys)

    def objective(params):
      predictions = apply_model(graphdef, params, batch, model_keys)
      predictions, labels, mask = losses.delay_aligned(predictions, batch['labels'],
                                                       batch['mask'], label_delay)
      total, per_task = losses.loss(loss_kind, predictions, labels, mask, task_weights,
                                    axis_name=sharding.DATA_AXIS)
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


def compiled_train_step(graphdef, config: RunConfig, parallel: sharding.DataParallel) -> Callable:
  """The data-parallel train step `(state, batch) -> (state, metrics)`, donating the state.

  Cached on the parts of the run record it depends on: the runs of an experiment grid (and of a
  test session) that share a model, optimiser and loss share one compiled program.
  """
  return _compiled_train_step(graphdef, config.optimizer, config.num_steps, config.loss,
                              config.task_weights, config.augment, config.model.label_delay,
                              parallel)


@functools.lru_cache(maxsize=8)
def _compiled_train_step(graphdef, optimizer: OptimizerConfig, num_steps: int, loss_kind: str,
                         task_weights, augment: AugmentConfig, label_delay: int,
                         parallel: sharding.DataParallel) -> Callable:
  return parallel.run(
      make_per_device_step(graphdef, make_optimizer(optimizer, num_steps), loss_kind,
                           task_weights, augment, label_delay),
      batch_axis=1, donate_argnums=(0,))


def create_state(config: RunConfig, info: ModelInfo) -> tuple[Any, TrainState]:
  graphdef, params = init_params(config.model, info, config.seeds)
  opt_state = jax.jit(jax.vmap(make_optimizer(config.optimizer, config.num_steps).init))(params)
  step = jnp.zeros((len(config.seeds),), jnp.int32)
  return graphdef, TrainState(step=step, params=params, opt_state=opt_state)


def seed_iterators(config, corpus: input_pipeline.Corpus) -> input_pipeline.SeedIterators:
  iterators = []
  for seed in config.seeds:
    dataset = input_pipeline.train_dataset(
        corpus, tasks=config.tasks, modalities=config.model.modalities,
        global_batch=config.global_batch, seed=int(seed), process_index=jax.process_index(),
        process_count=jax.process_count(), recording_norm=config.model.recording_norm_inputs)
    iterators.append(input_pipeline.train_iterator(
        dataset, num_workers=config.data_workers, prefetch=config.prefetch))
  return input_pipeline.SeedIterators(iterators)


class _HostFeed:
  """Batches from the grain pipeline (`seed_iterators`), put on the devices step by step."""

  def __init__(self, config: RunConfig, corpus, parallel: sharding.DataParallel,
               first_example: int):
    self.iterators = seed_iterators(config, corpus)
    self.parallel, self.seeds, self.first_example = parallel, config.seeds, first_example

  def batch(self, step: int) -> dict[str, jax.Array]:
    del step  # the iterators' position: they are restored with the checkpoint
    return self.parallel.put_batch(
        identify_examples(next(self.iterators), self.seeds, self.first_example), axis=1)

  def data_state(self, step: int) -> bytes:
    del step
    return self.iterators.get_state()

  @property
  def restore_target(self):
    return self.iterators


class _DeviceFeed:
  """Batches gathered on the devices from the training split uploaded there once.

  Global batch `step` of seed `s` is the windows `input_pipeline.WindowOrder` gives (grain's own
  shuffle over the window numbers), so the batches are those of `_HostFeed`, bit for bit; only
  their `[seeds, local_batch]` window numbers go to the devices per step.
  """

  def __init__(self, config: RunConfig, corpus, parallel: sharding.DataParallel,
               first_example: int):
    self.orders = [input_pipeline.WindowOrder(
        corpus, global_batch=config.global_batch, seed=int(seed),
        process_index=jax.process_index(), process_count=jax.process_count())
        for seed in config.seeds]
    windows = input_pipeline.read_train_split(corpus, config.tasks, config.model.modalities)
    recording_norm = config.model.recording_norm_inputs
    self.resident = parallel.put_resident(
        {'windows': windows,
         'norms': input_pipeline.normalisation(corpus.stats, config.model.modalities),
         'recording_norms': (input_pipeline.recording_normalisation(
             corpus, config.model.modalities, recording_norm) if recording_norm else {})})
    self.gather = _compiled_gather(parallel)
    self.parallel, self.seeds, self.first_example = parallel, config.seeds, first_example

  def indices(self, step: int) -> np.ndarray:
    """`[seeds, local_batch]` int32: this process's windows of global batch `step`."""
    return np.stack([order.batch(step) for order in self.orders])

  def batch(self, step: int) -> dict[str, jax.Array]:
    ids = identify_examples({'index': self.indices(step)}, self.seeds, self.first_example)
    return self.gather(self.resident, self.parallel.put_batch(ids, axis=1))

  def data_state(self, step: int) -> bytes:
    return input_pipeline.SeedIterators.state_at(step, len(self.seeds))

  restore_target = None  # the position is the step


@functools.lru_cache(maxsize=4)
def _compiled_gather(parallel: sharding.DataParallel) -> Callable:
  return parallel.gather(input_pipeline.gather_windows)


def training_feed(config: RunConfig, corpus, parallel: sharding.DataParallel
                  ) -> tuple[sharding.DataPlacement, Any]:
  """Where this run's training data comes from (`config.data_placement`), and the feed of
  device batches for it (`feed.batch(step)`); `_HostFeed` and `_DeviceFeed` give the same."""
  placement = sharding.choose_data_placement(
      config.data_placement,
      input_pipeline.train_split_bytes(corpus, config.tasks, config.model.modalities),
      list(parallel.mesh.devices.flat))
  # This process's slice of each global batch (processes take consecutive slices).
  first_example = jax.process_index() * (config.global_batch // jax.process_count())
  feed = _DeviceFeed if placement.kind == 'device' else _HostFeed
  return placement, feed(config, corpus, parallel, first_example)


# Fields a run may be resumed with changed: they do not change what the steps compute (a larger
# `patience` lets an early-stopped run go on; both data placements give the same batches).
# `data_dir` may move: the dataset is checked by identity (`ModelInfo`), not by path.
# `num_steps` may change only when `optimizer.decay_steps` fixes the learning-rate schedule.
RESUMABLE_CHANGES = ('log_every', 'eval_every', 'checkpoint_every', 'data_workers', 'prefetch',
                     'eval_batch', 'data_dir', 'patience', 'data_placement')


def _check_same_run(saved: dict, config: RunConfig, info: ModelInfo, workdir: str) -> None:
  resumable = RESUMABLE_CHANGES
  if config.optimizer.decay_steps is not None:
    resumable += ('num_steps',)
  # Parsed first: a field added since the run was saved (model.compute_dtype) takes its
  # default there, as it does when the checkpoint is restored.
  saved_config = RunConfig.from_mapping(saved['config']).to_json()
  differing = leaf_differences(saved_config, config.to_json(), ignore=resumable)
  if any(d.startswith('num_steps:') for d in differing):
    differing.append('(num_steps sets the length of the cosine learning-rate decay, so the run '
                     'would not continue as it started; to train a run longer than it planned, '
                     'start it with --config.optimizer.decay_steps=N, which fixes the schedule)')
  if differing:
    raise CheckpointError(f'{workdir} holds a run with another config ({"; ".join(differing)}); '
                          'use a new workdir or the saved config')
  saved_info = ModelInfo.from_json(saved['model_info'])
  if saved_info != info:
    changed = leaf_differences(saved_info.to_json(), info.to_json())
    raise CheckpointError(
        f'{workdir} was trained on another prepared dataset than {config.dataset} under '
        f'{config.data_dir} ({len(changed)} differences, first: {changed[0]}); point '
        '--config.data_dir at the dataset it was trained on, or use a new workdir')


class _MetricWriter:
  """Metrics as JSON lines (`metrics.jsonl`) and TensorBoard event files, from process 0."""

  def __init__(self, workdir: str, resumed_step: int):
    """Rows after `resumed_step` (written by a run killed after its last checkpoint, and about
    to be trained again) are dropped, so the log holds one row per step and kind."""
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      path = os.path.join(workdir, 'metrics.jsonl')
      if os.path.exists(path):
        with open(path) as f:
          kept = [line for line in f if line.strip() and _row_step(line) <= resumed_step]
        with files.atomic_write(path) as f:
          f.writelines(kept)
      self._jsonl = open(path, 'a')
      # TensorBoard likewise discards the earlier events from `purge_step` on.
      self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                        purge_step=resumed_step + 1)

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


def _row_step(line: str) -> float:
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return math.inf  # a line cut by a kill: dropped with the rows after the checkpoint


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def train_and_evaluate(config: RunConfig, workdir: str,
                       corpus: input_pipeline.Corpus | None = None) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint if any), evaluates on dev, saves.

  One run at a time per workdir: a second one started on it stops at once (`InUse`, naming the
  process that holds it). Ctrl-C stops training with `Interrupted`, saying which checkpoint is
  kept; a full disk or an unwritable workdir ends with `OutputError` naming the workdir.

  Returns the final summary: step, seconds, steps per second, the last and best dev tables.
  """
  files.make_dirs(workdir)
  if not os.access(workdir, os.W_OK):
    raise OutputError(errno.EACCES, f'workdir {workdir}: not writable')
  lock = os.path.join(workdir, f'.lock.process{jax.process_index()}')
  with files.exclusive(lock, f'workdir {workdir}'):
    progress = {'step': 0, 'saved': None}
    try:
      return _train(config, workdir, corpus, progress)
    except KeyboardInterrupt:
      saved = ('no checkpoint yet' if progress['saved'] is None else
               f"its checkpoint of step {progress['saved']}")
      raise Interrupted(f"interrupted at step {progress['step']}; {workdir} keeps {saved}: run "
                        'the same command to resume') from None
    except OSError as error:
      raise files.output_error(workdir, error, 'cannot write the run') from None


def _train(config: RunConfig, workdir: str, corpus: input_pipeline.Corpus | None,
           progress: dict[str, Any]) -> dict[str, Any]:
  corpus = corpus or input_pipeline.open_corpus(config.dataset, config.data_dir)
  tasks = config.tasks
  # Unknown task names and modalities the corpus lacks fail here, with what the corpus has.
  info = corpus.model_info(tasks, config.model.modalities)
  # So do a label delay longer than the windows' overlap and a corpus prepared without the
  # per-recording statistics `recording_norm` needs, before any compiling.
  windows.check_delay(config.model.label_delay, info.window, info.hop)
  if config.model.recording_norm_inputs:
    for split in corpus.sources:
      corpus.recording_stats(split)
  parallel = sharding.DataParallel(sharding.make_mesh(), config.parallel)
  parallel.check_batch_size(config.global_batch)

  graphdef, state = create_state(config, info)
  placement, feed = training_feed(config, corpus, parallel)
  _log(placement.describe())
  store = checkpoints.Checkpoints(workdir)
  run_start = time.time()
  best = _Best()
  seconds_before = 0.0  # training wall time of earlier processes of this run
  latest = store.latest_step()
  if latest is not None:
    latest_info = store.restore_run_info(latest)
    _check_same_run(latest_info, config, info, workdir)
    state = store.restore_training(latest, state, feed.restore_target, parallel.replicated,
                                   config, info)
    best = _Best.restored(store.best_run_info())
    seconds_before = float(latest_info.get('train_seconds', 0.0))
    _log(f'resumed from {workdir} at step {latest}')
  run_info = {'config': config.to_json(), 'model_info': info.to_json()}

  def elapsed() -> float:
    return seconds_before + time.time() - run_start

  state = parallel.put_state(state)
  step_fn = compiled_train_step(graphdef, config, parallel)
  step = int(latest or 0)
  progress.update(step=step, saved=latest)
  writer = _MetricWriter(workdir, step)
  pending: list[tuple[int, Any]] = []  # device metrics not yet checked for NaN
  last_eval: dict[str, Any] | None = None
  start_time, start_step, compile_seconds = time.time(), step, None
  stopped_early = best.patience_spent(step, config)
  try:
    while step < config.num_steps and not stopped_early:
      batch = feed.batch(step)
      tic = time.time()
      state, metrics = step_fn(state, batch)
      step += 1
      progress['step'] = step
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
          if best.update(step, last_eval, elapsed()):
            store.save_best(step, _snapshot(parallel.get_state(state).params),
                            {**run_info, 'step': step, 'dev': last_eval,
                             'train_seconds': best.seconds}, best.score)
          # The stop is decided at an evaluation, and saved: a resumed run stops there too.
          stopped_early = best.patience_spent(step, config)
          save = save or stopped_early
        if save:
          store.save_latest(step, _snapshot(parallel.get_state(state)), feed.data_state(step),
                            {**run_info, 'step': step, 'train_seconds': elapsed()})
          progress['saved'] = step
        rate = (step - start_step) / max(time.time() - start_time, 1e-9)
        writer.write(step, 'train', {**values, 'steps_per_second': rate})
        dev = '' if last_eval is None else f" | dev CCC {last_eval['mean']['ccc_concat']:.3f}"
        _log(f"step {step}/{config.num_steps} | loss {values['loss']:.4f} | "
             f'{rate:.2f} steps/s{dev}')
        if stopped_early:
          _log(f'early stop at step {step}: no better dev CCC in {config.patience} evaluations '
               f'since step {best.step} ({best.score:.4f}), whose checkpoint is the best')
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
      'dev': last_eval, 'best_dev_ccc': best.score, 'best_step': best.step,
      'best_dev': best.dev, 'seconds_to_best': best.seconds, 'train_seconds': elapsed(),
      'stopped_early': stopped_early, 'tasks': list(tasks), 'seeds': list(config.seeds),
      'data_placement': placement.kind}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, 'summary.json'), summary)
  return summary


class _Best:
  """The best mean dev CCC so far: its step, its dev table and the training wall time (all
  processes of the run) it took to reach it; and whether early stopping's patience is spent."""

  def __init__(self, score: float = -math.inf, step: int | None = None, dev=None,
               seconds: float | None = None):
    self.score, self.step, self.dev, self.seconds = score, step, dev, seconds

  @classmethod
  def restored(cls, run_info: dict | None) -> '_Best':
    if run_info is None:
      return cls()
    return cls(float(run_info['dev_ccc']), int(run_info['step']), run_info.get('dev'),
               run_info.get('train_seconds'))

  def update(self, step: int, dev: dict[str, Any], seconds: float) -> bool:
    """Takes an evaluation; True when it is a new best."""
    score = dev['mean']['ccc_concat']
    if not (math.isfinite(score) and score > self.score):
      return False
    self.score, self.step, self.dev, self.seconds = score, step, dev, seconds
    return True

  def patience_spent(self, step: int, config: RunConfig) -> bool:
    """`config.patience` evaluations since the best without a better one (evaluations fall
    every `eval_every` steps)."""
    if config.patience is None or self.step is None:
      return False
    return (step - self.step) // config.eval_every >= config.patience


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


def evaluate_dev(config: RunConfig, graphdef, params, corpus, tasks) -> dict[str, Any]:
  """The dev table of `evaluation.score_split`: the seeds' ensemble at the top level (what the
  best checkpoint is chosen by), each seed under `seeds`, their mean under `seed_mean`."""
  predictions = evaluation.predict_split(graphdef, params, corpus, 'dev', config.model, tasks,
                                         batch_size=config.eval_batch)
  return evaluation.score_split(predictions, tasks)


def _flatten(table: dict[str, Any]) -> dict[str, float]:
  """The ensemble's rows of a dev table as `row/column` scalars (for the metric writers)."""
  flat = {}
  for row, columns in table.items():
    if isinstance(columns, dict) and row != 'seed_mean':
      flat.update({f'{row}/{name}': value for name, value in columns.items()})
  return flat

