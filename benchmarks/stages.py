r"""The measurements of `benchmarks/run.py`, one per process (`benchmarks.common.run_stage`).

Owns what is timed and how, always through the project's own code paths:

- `info`: backend, devices, versions, the default config's global batch.
- `matmul`: the backend's measured matmul rate (a large jitted `jnp.dot`) in float32, or in
  `dtype` (bfloat16), the reference peak for the model's achieved FLOP/s in that dtype.
- `prepare`: `launch.prepare.prepare_dataset` of a dataset spec (any corpus, any number of
  workers), in a fresh folder; the bytes written.
- `compare`: a prepared dataset window by window against a reference preparation of the same
  corpus (an earlier version's): order, features, statistics.
- `train`: the trainer's step (`train.create_state`, `train.make_per_device_step` run through
  `sharding.DataParallel`, batches from `train.seed_iterators`) on the first `devices` devices:
  compile time apart, then step time on batches already on the devices; the losses of the first
  steps (compared across device counts by run.py); XLA's FLOP count of the step and of the
  forward pass (`evaluation.predict_windows`); and, with `loop_steps`, the trainer's loop split
  into data loading, host-to-device and step compute. `compute_dtype` sets the model's
  (`ModelConfig.compute_dtype`: 'bfloat16' is the mixed-precision step).
- `data_path`: the trainer's loop with one data path (`train.training_feed` with
  `data_placement` 'host' or 'device'): the step alone on a batch already on the devices, the
  batches alone (the devices idle), and the loop as the trainer runs it (asynchronous dispatch),
  whose excess over the step alone is the time the devices waited for data.
- `pipeline`: the trainer's input iterators alone (`train.seed_iterators`) with `workers`.
- `parts`: where a step's compute goes: forward+backward of the whole model, of each modality
  branch alone and of each convolution of the raw-audio branch (the model's own sub-modules),
  with their FLOPs, timed in turn with the trainer's step.
- `inference`: `ccc_jax.inference.Predictor.predict` on the generated audio and mocap of
  benchmarks/inference_speed.py, with its freshly initialised default model (speed does not
  depend on training).

Run by run.py as `python -m benchmarks.stages --stage=NAME --args=JSON --output=FILE`; the
process's own XLA_FLAGS decide how many CPU devices it sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from ccc_jax import audio_io
from ccc_jax import evaluation
from ccc_jax import features
from ccc_jax import host_memory
from ccc_jax import input_pipeline
from ccc_jax import sharding
from ccc_jax import train
from launch import cli
from launch.configs import synthetic

_STAGE = flags.DEFINE_string('stage', None, 'Which measurement to run.')
_ARGS = flags.DEFINE_string('args', '{}', 'Its arguments, JSON.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write its JSON result.')


def _default_setup(data_dir: str):
  """The default synthetic config (launch/configs/synthetic.py), its corpus and ModelInfo."""
  config = cli.run_config(synthetic.get_config()).replace(data_dir=data_dir)
  corpus = input_pipeline.open_corpus(config.dataset, data_dir)
  info = corpus.model_info(config.tasks, config.model.modalities)
  return config, corpus, info


def _block_all(tree) -> None:
  jax.block_until_ready(tree)


def info(args) -> dict[str, Any]:
  del args
  devices = jax.devices()
  return {'backend': jax.default_backend(), 'device_count': len(devices),
          'device_kind': devices[0].device_kind, 'jax': jax.__version__,
          'host_cpus': os.cpu_count(), 'python': platform.python_version(),
          'global_batch': synthetic.get_config().global_batch}


def matmul(args) -> dict[str, Any]:
  """GFLOP/s of a jitted float32 `[n, n] @ [n, n]` (2 n^3 FLOPs) on the default device, at the
  default matmul precision, which is what the model's layers use (that default computes
  float32 products with TF32 on recent NVIDIA GPUs and with bfloat16 passes on TPU)."""
  n, repeats = args['n'], args['repeats']
  dtype = args.get('dtype', 'float32')
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(keys[1], (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  _block_all(dot(a, b))
  seconds = common.time_calls(lambda: _block_all(dot(a, b)), repeats)
  gflops = [2 * n ** 3 / s / 1e9 for s in seconds]
  return {'n': n, 'dtype': dtype, 'repeats': repeats, 'gflops_median': common.median(gflops),
          'gflops_max': max(gflops), 'seconds': seconds}


def prepare(args) -> dict[str, Any]:
  """`launch.prepare.prepare_dataset` of `args['name']` (a dataset spec; `manual_dir`, `workers`
  optional) into `args['data_dir']` (or a temporary folder, removed afterwards), with the bytes
  it wrote."""
  from datasets import prepare as prepare_lib  # pylint: disable=g-import-not-at-top
  data_dir = args.get('data_dir') or tempfile.mkdtemp(prefix='ccc_jax_bench_prepare_')
  try:
    summary = prepare_lib.prepare_dataset(args['name'], data_dir, args.get('manual_dir'),
                                          workers=args.get('workers'))
    sizes = {name: os.path.getsize(os.path.join(summary.path, name))
             for name in os.listdir(summary.path)}
  finally:
    if not args.get('data_dir'):
      shutil.rmtree(data_dir, ignore_errors=True)
  return {'name': summary.name, 'seconds': summary.seconds, 'hours': summary.hours,
          'seconds_per_hour': summary.seconds / summary.hours,
          'windows': sum(split['windows'] for split in summary.splits.values()),
          'bytes': sum(sizes.values()),
          'train_bytes': sum(size for name, size in sizes.items() if '-train.' in name),
          'path': summary.path}


def compare_prepared(args) -> dict[str, Any]:
  """Window by window, a prepared dataset folder (`args['folder']`) against a reference folder
  of the same corpus (`args['reference']`, e.g. prepared by an earlier version, with float32
  audio): the same splits, windows in the same order, every feature equal (audio after
  `audio_io.from_pcm16`: the largest difference), the same metadata and statistics.
  Both are read with TFDS's code-free reader (`tfds.builder_from_directory`), one window at a
  time."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builders = [tfds.builder_from_directory(args[key]) for key in ('reference', 'folder')]
  reference, prepared = [b.info.metadata for b in builders]
  stats_difference = max(
      float(np.max(np.abs(np.asarray(reference['stats'][name][moment]) -
                          np.asarray(prepared['stats'][name][moment]))))
      for name in reference['stats'] for moment in ('mean', 'std'))
  other_metadata_equal = ({k: v for k, v in reference.items() if k != 'stats'} ==
                          {k: v for k, v in prepared.items() if k != 'stats'})
  sources = [b.as_data_source() for b in builders]
  splits = sorted(sources[0])
  result = {'splits_equal': splits == sorted(sources[1]), 'order_equal': True, 'windows': 0,
            'largest_difference': {}, 'stats_largest_difference': stats_difference,
            'metadata_equal_but_stats': other_metadata_equal}
  for split in splits:
    old, new = sources[0][split], sources[1][split]
    if len(old) != len(new):
      result['order_equal'] = False
      continue
    for index in range(len(old)):
      a, b = old[index], new[index]
      if (a['recording'], a['start']) != (b['recording'], b['start']):
        result['order_equal'] = False
      for name in a:
        if name in ('recording', 'start'):
          continue
        value = audio_io.from_pcm16(b[name]) if name == 'audio' else b[name]
        difference = float(np.max(np.abs(np.asarray(a[name], np.float64) - value)))
        result['largest_difference'][name] = max(result['largest_difference'].get(name, 0.0),
                                                 difference)
      result['windows'] += 1
  return result


def train_step(args) -> dict[str, Any]:
  """The trainer's step on the first `args['devices']` devices; see the module docstring."""
  config, corpus, model_info = _default_setup(args['data_dir'])
  config = config.replace(seeds=tuple(range(args.get('seeds', 1))),  # several: vectorised
                          model=dataclasses.replace(
                              config.model, compute_dtype=args.get('compute_dtype', 'float32')))
  devices = jax.devices()[:args['devices']]
  if len(devices) != args['devices']:
    raise ValueError(f"asked for {args['devices']} devices, {len(jax.devices())} present")
  parallel = sharding.DataParallel(sharding.make_mesh(devices), config.parallel)
  parallel.check_batch_size(config.global_batch)

  start = time.perf_counter()
  graphdef, state = train.create_state(config, model_info)
  optimizer = train.make_optimizer(config.optimizer, config.num_steps)
  state = parallel.put_state(state)
  _block_all(state)
  init_s = time.perf_counter() - start
  num_params = sum(x.size for x in jax.tree.leaves(state.params)) // len(config.seeds)
  if config.parallel == 'pmap':
    num_params //= len(devices)
  step_fn = parallel.run(
      train.make_per_device_step(graphdef, optimizer, config.loss, config.task_weights),
      batch_axis=1, donate_argnums=(0,))
  iterators = train.seed_iterators(config, corpus)
  host_batches = [train.identify_examples(next(iterators), config.seeds)
                  for _ in range(args['batches'])]
  batches = [parallel.put_batch(b, axis=1) for b in host_batches]
  _block_all(batches)
  windows_per_step = config.global_batch * len(config.seeds)
  valid_frames_per_window = float(np.mean([b['mask'].sum() for b in host_batches])
                                  / windows_per_step)

  start = time.perf_counter()
  lowered = step_fn.lower(state, batches[0])
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  step_flops = common.flops_of(compiled)  # of one device's program

  # The same first steps on every device count: their losses must agree.
  losses = []
  for i in range(args['check_steps']):
    state, metrics = compiled(state, batches[i % len(batches)])
    losses.append(float(np.mean(jax.device_get(metrics['loss']))))

  # Wall time, and this process's CPU time (see common.time_call).
  step_seconds, step_cpu_seconds = [], []
  for i in range(args['steps']):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batches[i % len(batches)])
    _block_all(metrics)
    step_seconds.append(time.perf_counter() - start)
    step_cpu_seconds.append(time.process_time() - cpu_start)
  step_s = common.median(step_seconds)

  # Forward pass alone, as evaluation and inference run it, on one device.
  params = parallel.local_copy(state.params)
  inputs = {m: host_batches[0][m][0] for m in config.model.modalities}  # first seed's windows
  forward = evaluation.predict_windows.lower(graphdef, params, inputs).compile()
  forward_flops = common.flops_of(forward)

  result = {
      'devices': len(devices), 'global_batch': config.global_batch,
      'compute_dtype': config.model.compute_dtype,
      'seeds': len(config.seeds), 'parallel': config.parallel, 'window': model_info.window,
      'num_params': int(num_params), 'init_s': init_s, 'lower_s': lower_s,
      'compile_s': compile_s, 'losses': losses, 'step_seconds': step_seconds,
      'step_s': step_s, 'step_cpu_s': common.median(step_cpu_seconds),
      'windows_per_s': windows_per_step / step_s,
      'valid_frames_per_window': valid_frames_per_window,
      'label_frames_per_s': windows_per_step * valid_frames_per_window / step_s,
      'step_flops_per_device': step_flops,
      # The compiled program is one device's share (SPMD); times devices is the whole step.
      'train_flops_per_window': (None if step_flops is None else
                                 step_flops * len(devices) / windows_per_step),
      'forward_flops_per_window': (None if forward_flops is None else
                                   forward_flops / config.global_batch),
      'device_peak_mib': [common.device_peak_mib(d) for d in devices],
  }
  if args.get('loop_steps'):
    result['loop'] = _training_loop(parallel, compiled, state, iterators, args['loop_steps'],
                                    windows_per_step, config.seeds)
  return result


def _training_loop(parallel, compiled, state, iterators, steps: int,
                   windows_per_step: int, seeds) -> dict[str, Any]:
  """The trainer's loop (`train.train_and_evaluate`: next batch, put_batch, step), timed twice.

  Split: each stage waited for, so its time is its own (nothing overlaps). Then as the trainer
  runs it, without waiting, where JAX's asynchronous dispatch lets the host load the next batch
  while the devices compute.
  """
  split = {'load_s': [], 'host_to_device_s': [], 'compute_s': []}
  for _ in range(steps):
    t0 = time.perf_counter()
    host_batch = train.identify_examples(next(iterators), seeds)
    t1 = time.perf_counter()
    batch = parallel.put_batch(host_batch, axis=1)
    _block_all(batch)
    t2 = time.perf_counter()
    state, metrics = compiled(state, batch)
    _block_all(metrics)
    t3 = time.perf_counter()
    split['load_s'].append(t1 - t0)
    split['host_to_device_s'].append(t2 - t1)
    split['compute_s'].append(t3 - t2)
  start = time.perf_counter()
  for _ in range(steps):
    host_batch = train.identify_examples(next(iterators), seeds)
    state, metrics = compiled(state, parallel.put_batch(host_batch, axis=1))
  _block_all((state, metrics))
  overlapped_s = time.perf_counter() - start
  result = {name: common.median(values) for name, values in split.items()}
  result.update({'steps': steps, 'overlapped_step_s': overlapped_s / steps,
                 'overlapped_windows_per_s': windows_per_step * steps / overlapped_s})
  return result


def data_path(args) -> dict[str, Any]:
  """The trainer's loop fed by one data path, `args['placement']` ('host' or 'device').

  Three timings on the same compiled step (`train.compiled_train_step`) and feed
  (`train.training_feed`, as the trainer builds them):
  - `batch_s`: a batch alone, made and placed on the devices while they are otherwise idle
    (mean over `batches`): the host's rate limit, whatever the devices' speed;
  - `compute_step_s`: the step alone, on a batch already on the devices, each step waited for;
  - `loop_step_s`: the loop as the trainer runs it (next batch, step, no waiting; JAX's
    asynchronous dispatch overlaps the two). The two alternate in rounds of `round_steps`
    (`loop_steps` in all), so both see the same load. The devices waited for data for the
    loop's time beyond the steps alone: `device_wait_fraction` = 1 - compute / loop (0 when
    within noise below). `blocked_fraction`: the loop's time spent in `feed.batch`.
  """
  config, corpus, model_info = _default_setup(args['data_dir'])
  config = config.replace(data_placement=args['placement'])
  devices = jax.devices()[:args['devices']]
  parallel = sharding.DataParallel(sharding.make_mesh(devices), config.parallel)
  graphdef, state = train.create_state(config, model_info)
  state = parallel.put_state(state)
  step_fn = train.compiled_train_step(graphdef, config, parallel)
  start = time.perf_counter()
  placement, feed = train.training_feed(config, corpus, parallel)
  setup_s = time.perf_counter() - start  # reading (and for 'device', uploading) the split
  start = time.perf_counter()
  state, metrics = step_fn(state, feed.batch(0))  # compiles the step (and the gather)
  _block_all(metrics)
  first_step_s = time.perf_counter() - start
  step = 1

  start = time.perf_counter()
  for _ in range(args['batches']):
    step += 1
    _block_all(feed.batch(step))
  batch_s = (time.perf_counter() - start) / args['batches']

  # The step alone and the loop in alternating rounds of `round_steps`, so that a shared
  # machine's changing load falls on both alike.
  compute_s = loop_s = blocked = 0.0
  rounds = max(1, args['loop_steps'] // args['round_steps'])
  for _ in range(rounds):
    batch = feed.batch(step)
    _block_all(batch)
    for _ in range(args['round_steps']):
      start = time.perf_counter()
      state, metrics = step_fn(state, batch)
      _block_all(metrics)
      compute_s += time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args['round_steps']):
      step += 1
      tic = time.perf_counter()
      batch = feed.batch(step)
      blocked += time.perf_counter() - tic
      state, metrics = step_fn(state, batch)
    _block_all((state, metrics))
    loop_s += time.perf_counter() - start
  steps = rounds * args['round_steps']
  compute_step_s, loop_step_s = compute_s / steps, loop_s / steps
  windows = config.global_batch * len(config.seeds)
  return {
      'placement': placement.kind, 'describe': placement.describe(),
      'split_mib': placement.split_bytes / common.MIB, 'devices': len(devices),
      'global_batch': config.global_batch, 'seeds': len(config.seeds), 'setup_s': setup_s,
      'first_step_s': first_step_s, 'compute_step_s': compute_step_s, 'batch_s': batch_s,
      'feed_limit_windows_per_s': windows / batch_s, 'loop_steps': steps,
      'loop_step_s': loop_step_s, 'steps_per_s': 1 / loop_step_s,
      'windows_per_s': windows / loop_step_s, 'blocked_fraction': blocked / loop_s,
      'device_wait_fraction': max(0.0, 1 - compute_step_s / loop_step_s),
      'device_peak_mib': [common.device_peak_mib(d) for d in devices],
  }


def pipeline(args) -> dict[str, Any]:
  """Windows per second of the trainer's input iterators alone, with `workers` processes."""
  config, corpus, _ = _default_setup(args['data_dir'])
  config = config.replace(data_workers=args['workers'])
  iterators = train.seed_iterators(config, corpus)
  start = time.perf_counter()
  next(iterators)  # starts the workers and fills the prefetch buffers
  first_s = time.perf_counter() - start
  seconds = common.time_calls(lambda: next(iterators), args['batches'])
  windows_per_batch = config.global_batch * len(config.seeds)
  return {'workers': args['workers'], 'prefetch': config.prefetch, 'batches': args['batches'],
          'first_batch_s': first_s, 'batch_s_median': common.median(seconds),
          'windows_per_s': windows_per_batch * len(seconds) / sum(seconds)}


def _forward_backward(module, inputs, input_grad: bool = False) -> tuple[Callable[[], Any], Any]:
  """`(call, compiled)`: the compiled gradient of `sum(module(inputs) ** 2)` with respect to the
  module's parameters (and its inputs, as backpropagation inside a network needs, with
  `input_grad`), and a call of it on `inputs` that waits for the result."""
  graphdef, params = nnx.split(module, nnx.Param)
  grad = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2),
                          argnums=(0, 1) if input_grad else 0))
  compiled = grad.lower(params, inputs).compile()
  return lambda: _block_all(compiled(params, inputs)), compiled


def _audio_layer_inputs(branch, audio) -> list[jax.Array]:
  """The input of each convolution of `models.AudioBranch` (mirrors its `__call__`)."""
  inputs, x = [], audio[..., None]
  for conv in branch.convs:
    inputs.append(x)
    x = jax.nn.gelu(conv(x))
  return inputs


def parts(args) -> dict[str, Any]:
  """Forward+backward time and FLOPs of the whole model, of each modality branch alone and of
  each convolution of the raw-audio branch, and the trainer's whole step, at the per-device
  batch of `args['devices']` devices, on one device.

  The targets are timed in turn, one call each per round, so that a change in the machine's
  load during the measurement touches all of them alike.
  """
  config, corpus, model_info = _default_setup(args['data_dir'])
  per_device = config.global_batch // args['devices']
  config = config.replace(global_batch=per_device)
  graphdef, params = train.init_params(config.model, model_info, [0])
  model = nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params))
  iterators = train.seed_iterators(config, corpus)
  host_batch = train.identify_examples(next(iterators), config.seeds)
  batch = {m: jnp.asarray(host_batch[m][0]) for m in config.model.modalities}
  calls, flops = {}, {}
  step, step_compiled = _one_device_step(config, model_info, host_batch)
  calls['train step'], flops['train step'] = step, common.flops_of(step_compiled)
  targets = {'model forward+backward': (model, batch, False)}
  targets.update({f'{m} branch forward+backward': (model.branches[m], batch[m], False)
                  for m in config.model.modalities})
  if 'audio' in config.model.modalities:
    branch = model.branches['audio']
    layer_inputs = _audio_layer_inputs(branch, batch['audio'])
    for index, (conv, inputs) in enumerate(zip(branch.convs, layer_inputs)):
      name = (f'  audio conv {index + 1}: {inputs.shape[-1]}->{conv.out_features} channels, '
              f'kernel {conv.kernel_size[0]}, stride {conv.strides}, '
              f'{inputs.shape[1] // conv.strides} steps out')
      targets[name] = (conv, inputs, index > 0)  # the first layer's input is the data
  for name, (module, inputs, input_grad) in targets.items():
    calls[name], compiled = _forward_backward(module, inputs, input_grad)
    flops[name] = common.flops_of(compiled)
  times = {name: [] for name in calls}  # (wall, CPU) seconds per call
  for call in calls.values():
    call()  # warm-up
  for _ in range(args['repeats']):
    for name, call in calls.items():
      times[name].append(common.time_call(call))
  return {'batch': per_device, 'repeats': args['repeats'],
          'parts': {name: {'seconds': common.median([t[0] for t in times[name]]),
                           'cpu_seconds': common.median([t[1] for t in times[name]]),
                           'flops': flops[name]}
                    for name in calls}}


def _one_device_step(config, model_info, host_batch) -> tuple[Callable[[], Any], Any]:
  """`(call, compiled)`: the trainer's step on one device and a call of it (state donated and
  carried from call to call) on `host_batch`, waiting for the result."""
  parallel = sharding.DataParallel(sharding.make_mesh(jax.devices()[:1]), config.parallel)
  graphdef, state = train.create_state(config, model_info)
  optimizer = train.make_optimizer(config.optimizer, config.num_steps)
  state = parallel.put_state(state)
  step_fn = parallel.run(
      train.make_per_device_step(graphdef, optimizer, config.loss, config.task_weights),
      batch_axis=1, donate_argnums=(0,))
  batch = parallel.put_batch(host_batch, axis=1)
  compiled = step_fn.lower(state, batch).compile()
  carried = [state]

  def call():
    carried[0], metrics = compiled(carried[0], batch)
    _block_all(metrics)
  return call, compiled


def inference(args) -> dict[str, Any]:
  """Seconds per hour of audio of `Predictor.predict` (log-mel, mocap features, windowing, the
  model, overlap averaging), with benchmarks/inference_speed.py's predictor (default model,
  fresh parameters) and generated recording."""
  from benchmarks import inference_speed  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  predictor = inference_speed._predictor('full', None)
  seconds_of_audio = args['seconds_of_audio']
  audio, positions = inference_speed._recording(seconds_of_audio)
  # pylint: enable=protected-access
  mocap = positions if predictor.needs_mocap else None

  def predict():
    return predictor.predict(audio, features.SAMPLE_RATE, mocap, inference_speed.MOCAP_RATE)
  start = time.perf_counter()
  traces = predict()
  first_s = time.perf_counter() - start  # includes compiling the forward pass
  seconds, cpu_seconds = zip(*[common.time_call(predict) for _ in range(args['repeats'])])
  hours = seconds_of_audio / 3600
  return {'seconds_of_audio': seconds_of_audio, 'frames': int(traces.shape[0]),
          'batch_size': predictor.batch_size, 'first_call_s': first_s,
          'seconds': list(seconds), 'seconds_per_hour': common.median(seconds) / hours,
          'cpu_seconds_per_hour': common.median(cpu_seconds) / hours,
          'device_peak_mib': common.device_peak_mib(jax.devices()[0])}


STAGES = {'info': info, 'matmul': matmul, 'prepare': prepare, 'compare': compare_prepared,
          'train': train_step, 'pipeline': pipeline, 'parts': parts, 'inference': inference,
          'data_path': data_path}


def main(argv):
  if _STAGE.value not in ('prepare', 'compare'):  # as the launch scripts (not preparation) do
    host_memory.keep_freed_memory()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _STAGE.value not in STAGES:
    raise app.UsageError(f'--stage must be one of {sorted(STAGES)}')
  result = STAGES[_STAGE.value](json.loads(_ARGS.value))
  common.write_stage_result(_OUTPUT.value, result)


if __name__ == '__main__':
  flags.mark_flags_as_required(['stage', 'output'])
  app.run(main)
