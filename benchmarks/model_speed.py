r"""Forward+backward time per batch of `AVDNet`, for each temporal model, on the local devices;
and (`--compare`) the trainer's step and the forward pass against the same model in PyTorch.

Default: times one jitted value-and-gradient step (mean-squared output as the loss; the real loss
adds negligible cost) after compilation, with the default model config and the data-contract
input shapes: audio [B, T*640], logmel [B, T*4, 40], mocap [B, T, 90]. Prints the minimum and
median over `--repeats` runs; the minimum is the figure least disturbed by other processes.

  python -m benchmarks.model_speed
  python -m benchmarks.model_speed --batch_sizes=8,32 --window=100 --repeats=20

`--compare=N` (needs PyTorch, the optional extra `bench`): N rounds, each one process per
measurement, alternated (ours, PyTorch, ours, PyTorch, ...), all with the tuned allocator
(`TUNED_ALLOCATOR`) unless `--notuned_allocator` (glibc's defaults); ours also set
`ccc_jax.host_memory`'s settings in the process, as the launch scripts do: the trainer's real
step (CCC loss, clipping,
AdamW; batch 32) and the evaluation forward pass (batch 64) of the default synthetic model
(`--compute_dtype` for ours), against `benchmarks/torch_twin.py` (PyTorch eager) started from
the same parameters; each PyTorch process first checks that its outputs equal ours. Prints the
median windows/s of each, the ratios, the load average and the CPU family.

  python -m benchmarks.model_speed --compare=4
  python -m benchmarks.model_speed --compare=2 --compute_dtype=bfloat16
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from ccc_jax import config as config_lib
from ccc_jax import host_memory
from ccc_jax import models
from ccc_jax.config import ModelConfig

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '32'], 'Batch sizes to time.')
_WINDOW = flags.DEFINE_integer('window', 100, 'Window length T in label frames (25 Hz).')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs per setting, after compilation.')
_TEMPORAL = flags.DEFINE_list('temporal', list(config_lib.TEMPORAL_MODELS), 'Temporal models to time.')

_COMPARE = flags.DEFINE_integer('compare', 0, 'Rounds of the comparison with the PyTorch twin '
                                '(0: the forward+backward timing above instead).')
_MEASURE = flags.DEFINE_enum('measure', None, list(('jax_train', 'jax_infer', 'torch_train',
                                                    'torch_infer')),
                             'One measurement of the comparison, in this process (internal).')
_JSON = flags.DEFINE_string('json', None, 'Where --measure writes its result (internal).')
_COMPUTE_DTYPE = flags.DEFINE_enum('compute_dtype', 'float32', list(config_lib.COMPUTE_DTYPES),
                                   'Our model\'s compute dtype in --compare.')
_TUNED_ALLOCATOR = flags.DEFINE_bool('tuned_allocator', True,
                                     'Run --compare\'s processes with TUNED_ALLOCATOR.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed calls per --compare process, after warm-up.')

INPUT_DIMS = {'audio': 640, 'logmel': 40, 'mocap': 90}
NUM_TASKS = 3
# glibc malloc settings that keep freed memory in the process (no mmap/munmap per large tensor),
# the "tuned allocator" PyTorch eager runs with (one arena for all threads as well cost its
# training 4-16%). Our processes set the two that matter from inside (`ccc_jax.host_memory`) and
# run their CPU computations on the calling thread, without which XLA's buffers never reach this
# heap (BUILD_NOTES.md "The page faults").
TUNED_ALLOCATOR = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': '68719476736',
                   'MALLOC_TOP_PAD_': '1073741824'}
TRAIN_BATCH, INFER_BATCH = 32, 64  # the synthetic config's global_batch and eval_batch
WARMUP = 3


def _example_inputs(batch_size: int, window: int) -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(0), 3)
  return {
      'audio': jax.random.normal(keys[0], (batch_size, window * INPUT_DIMS['audio'])),
      'logmel': jax.random.normal(keys[1], (batch_size, window * 4, INPUT_DIMS['logmel'])),
      'mocap': jax.random.normal(keys[2], (batch_size, window, INPUT_DIMS['mocap'])),
  }


def time_forward_backward(temporal: str, batch_size: int, window: int,
                          repeats: int) -> tuple[int, list[float]]:
  """Parameter count and the seconds of each timed forward+backward pass."""
  config = ModelConfig(temporal=temporal)
  model = models.AVDNet(config, num_tasks=NUM_TASKS, input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))

  @jax.jit
  def value_and_grad(params, inputs):
    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params)(inputs) ** 2)
    return jax.value_and_grad(loss)(params)

  inputs = _example_inputs(batch_size, window)
  jax.block_until_ready(value_and_grad(params, inputs))  # compile
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(value_and_grad(params, inputs))
    seconds.append(time.perf_counter() - start)
  return num_params, seconds


def _compare_setup(compute_dtype: str):
  """The default synthetic run record, its ModelInfo (the default corpus' input sizes: 17 mocap
  markers) and seed 0's parameters, as the trainer initialises them."""
  from ccc_jax import features  # pylint: disable=g-import-not-at-top
  from ccc_jax import train  # pylint: disable=g-import-not-at-top
  from launch import cli  # pylint: disable=g-import-not-at-top
  from launch.configs import synthetic  # pylint: disable=g-import-not-at-top
  config = cli.run_config(synthetic.get_config())
  config = config.replace(model=dataclasses.replace(config.model, compute_dtype=compute_dtype))
  input_dims = {'audio': features.SAMPLES_PER_FRAME, 'logmel': features.NUM_MELS,
                'mocap': features.mocap_feature_dim(17)}
  info = config_lib.ModelInfo(tasks=tuple(config.tasks), input_dims=input_dims, stats={},
                              window=100, hop=50, sample_rate=features.SAMPLE_RATE,
                              label_rate=features.LABEL_RATE, dataset=config.dataset)
  return config, info, train


def _compare_batch(batch_size: int, window: int, input_dims, num_tasks: int):
  """Random windows in the data-contract shapes (numpy), labels and a full mask."""
  rng = np.random.default_rng(0)
  rows = {'audio': window * input_dims['audio'], 'logmel': window * 4, 'mocap': window}
  batch = {m: rng.standard_normal((batch_size, n) if m == 'audio' else
                                  (batch_size, n, input_dims[m])).astype(np.float32)
           for m, n in rows.items()}
  batch['labels'] = np.tanh(rng.standard_normal((batch_size, window, num_tasks))
                            ).astype(np.float32)
  batch['mask'] = np.ones((batch_size, window), np.float32)
  return batch


def _timed(call, steps: int) -> tuple[list[float], list[float]]:
  """Wall and CPU seconds (this process's, all threads) of each of `steps` calls, after
  warm-up."""
  for _ in range(WARMUP):
    call()
  seconds, cpu_seconds = [], []
  for _ in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    call()
    seconds.append(time.perf_counter() - start)
    cpu_seconds.append(time.process_time() - cpu_start)
  return seconds, cpu_seconds


def _measure(kind: str, compute_dtype: str, steps: int) -> dict:
  """One measurement of the comparison (see the module docstring)."""
  from ccc_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ccc_jax import sharding  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config, info, train = _compare_setup(compute_dtype if kind.startswith('jax') else 'float32')
  graphdef, params = train.init_params(config.model, info, [0])
  num_tasks = len(config.tasks)
  batch_size = TRAIN_BATCH if kind.endswith('train') else INFER_BATCH
  batch = _compare_batch(batch_size, info.window, info.input_dims, num_tasks)
  inputs = {m: batch[m] for m in config.model.modalities}
  result = {'kind': kind, 'batch': batch_size, 'load_average': os.getloadavg()[0]}
  if kind == 'jax_train':
    parallel = sharding.DataParallel(sharding.make_mesh(jax.devices()[:1]), config.parallel)
    graphdef, state = train.create_state(config, info)
    state = parallel.put_state(state)
    step_fn = train.compiled_train_step(graphdef, config, parallel)
    device_batch = parallel.put_batch(
        train.identify_examples({k: v[None] for k, v in batch.items()}, config.seeds), axis=1)
    compiled = step_fn.lower(state, device_batch).compile()
    result['flops_per_window'] = common.flops_of(compiled) / batch_size
    state, metrics = compiled(state, device_batch)  # the state is donated: carry it on
    result['first_loss'] = float(metrics['loss'][0])
    carried = [state]

    def call():
      carried[0], metrics = compiled(carried[0], device_batch)
      jax.block_until_ready(metrics)
  elif kind == 'jax_infer':
    device_inputs = jax.device_put(inputs)
    compiled = evaluation.predict_windows.lower(graphdef, params, device_inputs).compile()
    result['flops_per_window'] = common.flops_of(compiled) / batch_size

    def call():
      jax.block_until_ready(compiled(params, device_inputs))
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
    twin = torch_twin.AVDNet(config.model, num_tasks, info.input_dims)
    torch_twin.load_jax_params(twin, nnx.to_pure_dict(jax.tree.map(lambda x: x[0], params)))
    torch_inputs = {m: torch.from_numpy(v) for m, v in inputs.items()}
    ours = np.asarray(evaluation.predict_windows(graphdef, params, inputs))[0]
    with torch.inference_mode():
      theirs = twin(torch_inputs).numpy()
    result['max_output_difference'] = float(np.max(np.abs(ours - theirs)))
    if not result['max_output_difference'] < 1e-4:
      raise AssertionError(f'the PyTorch twin differs from ours by '
                           f"{result['max_output_difference']:.2e}")
    result['torch'] = torch.__version__
    result['threads'] = torch.get_num_threads()
    if kind == 'torch_train':
      opt = config.optimizer
      step = torch_twin.make_train_step(twin, opt.learning_rate, opt.weight_decay, opt.clip_norm)
      labels, mask = torch.from_numpy(batch['labels']), torch.from_numpy(batch['mask'])
      result['first_loss'] = step(torch_inputs, labels, mask)

      def call():
        step(torch_inputs, labels, mask)
    else:
      def call():
        with torch.inference_mode():
          twin(torch_inputs)
  seconds, cpu_seconds = _timed(call, steps)
  result.update({'seconds': seconds, 'cpu_seconds': cpu_seconds,
                 'windows_per_s': batch_size / statistics.median(seconds),
                 'cpu_s_per_window': statistics.median(cpu_seconds) / batch_size})
  return result


def _cpu_family() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('cpu family'):
          return line.split(':')[1].strip()
  except OSError:
    pass
  return 'unknown'


def compare(rounds: int, compute_dtype: str, tuned_allocator: bool, steps: int) -> dict:
  """Alternated processes (see the module docstring); returns every result and the medians."""
  env = dict(os.environ, **(TUNED_ALLOCATOR if tuned_allocator else {}))
  kinds = ('jax_train', 'torch_train', 'jax_infer', 'torch_infer')
  results = {kind: [] for kind in kinds}
  with tempfile.TemporaryDirectory(prefix='ccc_jax_compare_') as tmp:
    for round_index in range(rounds):
      for kind in kinds:
        path = os.path.join(tmp, f'{kind}_{round_index}.json')
        process = subprocess.run(
            [sys.executable, '-m', 'benchmarks.model_speed', f'--measure={kind}',
             f'--compute_dtype={compute_dtype}', f'--steps={steps}', f'--json={path}'],
            env=env, capture_output=True, text=True, check=False)
        if process.returncode != 0:
          raise RuntimeError(f'{kind} failed:\n{process.stdout[-3000:]}{process.stderr[-3000:]}')
        with open(path) as f:
          results[kind].append(json.load(f))
        print(f"round {round_index + 1} {kind:11s} {results[kind][-1]['windows_per_s']:7.1f} "
              f"windows/s (load average {results[kind][-1]['load_average']:.2f})", flush=True)
  medians = {kind: statistics.median(r['windows_per_s'] for r in runs)
             for kind, runs in results.items()}
  return {'rounds': rounds, 'compute_dtype': compute_dtype, 'tuned_allocator': tuned_allocator,
          'cpu_family': _cpu_family(), 'results': results, 'medians': medians,
          'train_ratio': medians['jax_train'] / medians['torch_train'],
          'infer_ratio': medians['jax_infer'] / medians['torch_infer']}


def main(argv):
  del argv
  if _MEASURE.value in (None, 'jax_train', 'jax_infer'):
    # As the launch scripts do, before JAX starts (the PyTorch processes: TUNED_ALLOCATOR from
    # the environment, or glibc's defaults with --notuned_allocator).
    host_memory.keep_freed_memory()
  if _MEASURE.value:
    with open(_JSON.value, 'w') as f:
      json.dump(_measure(_MEASURE.value, _COMPUTE_DTYPE.value, _STEPS.value), f)
    return
  if _COMPARE.value:
    load_before = os.getloadavg()
    summary = compare(_COMPARE.value, _COMPUTE_DTYPE.value, _TUNED_ALLOCATOR.value, _STEPS.value)
    twin = summary['results']['torch_train'][0]
    print(f"cpu family {summary['cpu_family']}, {os.cpu_count()} CPUs; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; jax {jax.__version__}, "
          f"torch {twin['torch']} ({twin['threads']} threads); ours in "
          f"{summary['compute_dtype']}; tuned allocator: {summary['tuned_allocator']}; twin "
          f"outputs within {max(r['max_output_difference'] for r in summary['results']['torch_train']):.1e}"
          f", first losses ours {summary['results']['jax_train'][0]['first_loss']:.6f}, "
          f"PyTorch {twin['first_loss']:.6f}")
    for what, batch in (('train', TRAIN_BATCH), ('infer', INFER_BATCH)):
      ours, theirs = summary['medians'][f'jax_{what}'], summary['medians'][f'torch_{what}']
      flops = summary['results'][f'jax_{what}'][0]['flops_per_window']
      print(f'{what:5s} (batch {batch}): ours {ours:7.1f} windows/s '
            f'({ours * flops / 1e9:.1f} GFLOP/s), PyTorch {theirs:7.1f} windows/s: '
            f'{ours / theirs:.2f}x (medians of {summary["rounds"]} processes each)')
    return
  print(f'jax {jax.__version__}, devices: {jax.devices()}')
  print(f'default AVDNet, {NUM_TASKS} tasks, input_dims {INPUT_DIMS}, T={_WINDOW.value}, '
        'jitted forward+backward, after compile')
  for temporal in _TEMPORAL.value:
    for batch_size in (int(b) for b in _BATCH_SIZES.value):
      num_params, seconds = time_forward_backward(
          temporal, batch_size, _WINDOW.value, _REPEATS.value)
      print(f'temporal={temporal:3s} params={num_params:7d} batch={batch_size:3d}: '
            f'min {min(seconds) * 1e3:7.1f} ms, median {statistics.median(seconds) * 1e3:7.1f} ms '
            f'({_REPEATS.value} runs)')


if __name__ == '__main__':
  app.run(main)
