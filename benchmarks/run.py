r"""The benchmark table: preparation, input pipeline, train step, scaling, FLOPs, inference.

    python -m benchmarks.run --quick                       # a few minutes on a 2-core CPU
    python -m benchmarks.run --data_dir=data --output=results.json
    python -m benchmarks.run --table_from=results.json   # the table again, measuring nothing
    python -m benchmarks.run --suite=prepare [--quick]     # preparation alone (below)

`--suite=prepare` times preparation per hour of audio on two corpora of the same length, the
synthetic one and a CreativeIT-layout one (48 kHz audio, 45 markers at 120 Hz, written by the
test fixture writer), with 1 and 2 worker processes, alternated, with the bytes written and
peak memory; then, under a memory cap (RLIMIT_AS per process), a synthetic corpus whose train
split is larger than that cap and than TFDS's in-memory writer buffer (1 GB; past it TFDS spills
through TensorFlow); with `--reference=FOLDER` (the same corpus prepared by an earlier version)
it compares the two window by window.

Owns which measurements make the table, their sizes (`--quick` or full), the figures derived
from them (pipeline-to-step ratio, achieved FLOP/s against the measured matmul rate, speed-up
and loss agreement across device counts, the step in float32 and in bfloat16 each against the
matmul rate measured in its dtype) and the printed table and JSON. Every measurement
runs in its own process (`benchmarks/common.py`; what each measures: `benchmarks/stages.py`),
so each has its own peak memory and its own device count. This process never starts JAX: on an
accelerator it would hold device memory that the measurements need.

Device counts: on the CPU backend the train step runs on 1, 2, 4 and 8 fake CPU devices
(`--xla_force_host_platform_device_count`), which share the same cores: a correctness check
(the losses of the same first steps must agree) and a measure of the data-parallel overhead,
not a speed-up. On GPU or TPU it runs on 1, 2, 4, ... of the devices present and on all of them,
a real scaling figure (this path has not been run on an accelerator yet). The global batch of
the config stays fixed; the per-device batch shrinks.

Data: the default synthetic corpus (`synthetic_avd/default`) under `--data_dir`; if it is not
prepared there, the preparation measured first writes it into a temporary folder, removed
at the end.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags

from benchmarks import common

_QUICK = flags.DEFINE_bool('quick', False, 'Smaller repeats: a few minutes on a 2-core CPU.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', 'data', 'Where synthetic_avd/default is prepared (prepared into a temporary '
    'folder if it is not there).')
_OUTPUT = flags.DEFINE_string('output', None, 'Also write every measurement to this JSON file.')
_SUITE = flags.DEFINE_enum('suite', 'all', ['all', 'prepare'], 'all: the table below; prepare: '
                           'preparation speed, workers, size and a memory-capped large corpus.')
_REFERENCE = flags.DEFINE_string(
    'reference', None, '--suite=prepare: a folder of the large corpus prepared by an earlier '
    'version (e.g. .../synthetic_avd/<config>/1.2.0), compared window by window.')
_LARGE = flags.DEFINE_bool('large', True, '--suite=prepare: also the memory-capped large corpus.')
_TABLE = flags.DEFINE_bool('table', True, '--suite=prepare: the speed table (corpora x workers).')
_KEEP = flags.DEFINE_string('keep', None, '--suite=prepare: prepare the large corpus here and '
                            'keep it (default: a temporary folder).')
_TABLE_FROM = flags.DEFINE_string(
    'table_from', None, 'Measure nothing: print the table of a JSON file that --output wrote '
    '(with the same --suite).')

DATASET = 'synthetic_avd/default'  # launch/configs/synthetic.py's default
SEEDS = 3  # as in the experiment grid
PIPELINE_WORKERS = (0, 1, 2)
DATA_PATHS = ('host', 'device')  # RunConfig.data_placement; each run `data_path_runs` times
CPU_DEVICE_COUNTS = (1, 2, 4, 8)

# Sizes of each measurement. Full: enough repeats that the medians settle on a shared machine.
SIZES = {
    'quick': dict(prepare_repeats=1, matmul_repeats=5, batches=4, check_steps=3, steps=5,
                  loop_steps=6, pipeline_batches=30, parts_repeats=5, inference_seconds=600,
                  inference_repeats=2, data_path_runs=1, data_path_steps=20),
    'full': dict(prepare_repeats=3, matmul_repeats=20, batches=8, check_steps=5, steps=30,
                 loop_steps=30, pipeline_batches=200, parts_repeats=15, inference_seconds=3600,
                 inference_repeats=3, data_path_runs=2, data_path_steps=60),
}
MATMUL_SIZE = {'cpu': 4096, 'gpu': 8192, 'tpu': 8192}


def device_counts(backend: str, device_count: int, global_batch: int) -> list[int]:
  """Device counts to run the step on: fake CPU devices, or 1, 2, 4, ... and all accelerators;
  only those that divide the global batch."""
  if backend == 'cpu':
    counts = list(CPU_DEVICE_COUNTS)
  else:
    counts = sorted({2 ** k for k in range(device_count.bit_length()) if 2 ** k <= device_count}
                    | {device_count})
  return [n for n in counts if global_batch % n == 0]


def is_prepared(data_dir: str, name: str) -> bool:
  return bool(glob.glob(os.path.join(data_dir, name, '*', 'dataset_info.json')))


# --suite=prepare. The two corpora last the same: 6 recordings of `recording_s` each.
PREPARE_WORKERS = (1, 2)
PREPARE_SIZES = {'quick': dict(recording_s=60.0, repeats=1, large_s=600.0),
                 'full': dict(recording_s=300.0, repeats=2, large_s=600.0)}
CREATIVEIT_MARKERS, CREATIVEIT_MOCAP_RATE, CREATIVEIT_AUDIO_RATE = 45, 120.0, 48000
# Large: 15 speakers (11 train, 2 dev, 2 test), one session of `large_s` each: 1.8 h of
# training audio, 1.2 GB in float32 (dataset version 1.2.0), over TFDS's 1 GB buffer.
LARGE_SPEC = ('synthetic_avd:num_speakers=15,dev_speakers=2,test_speakers=2,'
              'sessions_per_speaker=1,session_seconds={seconds:g}')
MEMORY_CAP_BYTES = 3_500_000_000  # per process (RLIMIT_AS: virtual memory, not resident)


def measure_prepare(quick: bool, reference: str | None, keep: str | None, table: bool = True,
                    large: bool = True, log=print) -> dict[str, Any]:
  """The `--suite=prepare` measurements."""
  sizes = PREPARE_SIZES['quick' if quick else 'full']
  started, load_before = time.perf_counter(), os.getloadavg()
  results: dict[str, Any] = {'mode': 'quick' if quick else 'full', 'sizes': sizes, 'runs': {}}
  work = tempfile.mkdtemp(prefix='ccc_jax_bench_prepare_')
  try:
    if table:
      _prepare_table(sizes, work, results['runs'], lambda m: log(
          f'[{time.perf_counter() - started:6.0f} s] {m}'))
    if large:
      _prepare_large(sizes, reference, keep or work, results, lambda m: log(
          f'[{time.perf_counter() - started:6.0f} s] {m}'))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  results['seconds'] = time.perf_counter() - started
  results['load_average'] = {'before': load_before[0], 'after': os.getloadavg()[0]}
  return results


def _prepare_table(sizes, work: str, runs: dict[str, Any], log) -> None:
  """Both corpora with 1 and 2 workers, alternated."""
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  log('writing the CreativeIT-layout corpus ...')
  manual_dir = os.path.join(work, 'creativeit')
  fixtures.write_creativeit(
      manual_dir, actors_by_performance={('s1', 'p1'): ('a1', 'a2'), ('s1', 'p2'): ('a3', 'a4'),
                                         ('s2', 'p1'): ('a5', 'a6')},
      seconds=sizes['recording_s'], audio_rate=CREATIVEIT_AUDIO_RATE,
      mocap_rate=CREATIVEIT_MOCAP_RATE, markers=fixtures.creativeit_markers(CREATIVEIT_MARKERS))
  corpora = {
      'synthetic': {'name': ('synthetic_avd:num_speakers=6,dev_speakers=1,test_speakers=1,'
                             f"sessions_per_speaker=1,session_seconds={sizes['recording_s']:g}")},
      'creativeit': {'name': 'creativeit', 'manual_dir': manual_dir},
  }
  for repeat in range(sizes['repeats']):
    for workers in PREPARE_WORKERS:
      for corpus, args in corpora.items():
        key = f'{corpus}_{workers}_{repeat}'
        log(f'prepare {key} ...')
        runs[key] = common.run_stage('prepare', {**args, 'workers': workers})


def _prepare_large(sizes, reference: str | None, folder: str, results: dict[str, Any],
                   log) -> None:
  """The large corpus under the memory cap, and its comparison with `reference`."""
  log(f'prepare the large corpus under a {MEMORY_CAP_BYTES / 1e9:.1f} GB cap ...')
  results['large'] = common.run_stage(
      'prepare', {'name': LARGE_SPEC.format(seconds=sizes['large_s']),
                  'data_dir': os.path.join(folder, 'large')},
      address_space_bytes=MEMORY_CAP_BYTES)
  if reference:
    log(f'compare with {reference} ...')
    results['compare'] = common.run_stage('compare', {'reference': reference,
                                                      'folder': results['large']['path']})


def format_prepare_table(results: dict[str, Any]) -> str:
  """The `--suite=prepare` table."""
  runs = results['runs']
  lines = [f"ccc-jax preparation ({results['mode']}): {os.cpu_count()} host CPUs; took "
           f"{results['seconds']:.0f} s; load average {results['load_average']['before']:.1f} "
           f"before, {results['load_average']['after']:.1f} after", '']
  if runs:
    rows = []
    per_hour = {}
    for corpus in ('synthetic', 'creativeit'):
      for workers in PREPARE_WORKERS:
        group = [r for key, r in runs.items() if key.startswith(f'{corpus}_{workers}_')]
        per_hour[corpus, workers] = common.median([r['seconds_per_hour'] for r in group])
        first = group[0]
        rows.append((corpus, f"{first['hours'] * 60:.0f} min", str(workers),
                     ', '.join(f"{r['seconds_per_hour']:.1f}" for r in group),
                     f'{per_hour[corpus, workers]:.1f}',
                     f"{per_hour[corpus, 1] / per_hour[corpus, workers]:.2f}x",
                     f"{first['bytes'] / 1e6:.0f}",
                     f"{max(r['host_peak_mib'] for r in group):.0f} / "
                     f"{max(r['host_tree_peak_mib'] for r in group):.0f}"))
    lines.append(_columns(('corpus', 'audio', 'workers', 's per hour of audio (runs)', 'median',
                           'speed-up', 'MB written', 'peak MiB (process / tree)'), rows))
    ratio = {w: per_hour['creativeit', w] / per_hour['synthetic', w] for w in PREPARE_WORKERS}
    lines += ['', 'CreativeIT layout against synthetic, s per hour of audio: ' +
              ', '.join(f'{ratio[w]:.2f}x with {w} worker(s)' for w in PREPARE_WORKERS)]
  if 'large' in results:
    large = results['large']
    lines += ['', f"large corpus {large['name']} under RLIMIT_AS = "
              f"{MEMORY_CAP_BYTES / 1e9:.1f} GB per process: {large['hours']:.2f} h, train "
              f"split {large['train_bytes'] / 1e9:.2f} GB, {large['bytes'] / 1e9:.2f} GB in all, "
              f"{large['seconds']:.0f} s ({large['seconds_per_hour']:.1f} s per hour of audio), "
              f"peak resident {large['host_peak_mib']:.0f} MiB (largest process), "
              f"{large['host_tree_peak_mib']:.0f} MiB (process tree, sampled)"]
  if 'compare' in results:
    c = results['compare']
    lines += [f"against the reference: {c['windows']} windows, same splits "
              f"{c['splits_equal']}, same order {c['order_equal']}, largest differences "
              + ', '.join(f'{k} {v:.3g}' for k, v in sorted(c['largest_difference'].items()))
              + f"; statistics {c['stats_largest_difference']:.3g}; rest of the metadata equal "
              f"{c['metadata_equal_but_stats']}"]
  return '\n'.join(lines)


def measure(quick: bool, data_dir: str, log=print) -> dict[str, Any]:
  """Runs every measurement; returns their results and the figures derived from them."""
  sizes = SIZES['quick' if quick else 'full']
  started, load_before = time.perf_counter(), os.getloadavg()
  results: dict[str, Any] = {'mode': 'quick' if quick else 'full', 'sizes': sizes}

  def stage(key, name, args, **kwargs):
    log(f'[{time.perf_counter() - started:6.0f} s] {key} ...')
    results[key] = common.run_stage(name, args, **kwargs)
    return results[key]

  info = stage('info', 'info', {})
  backend = info['backend']
  on_cpu = backend == 'cpu'
  work = tempfile.mkdtemp(prefix='ccc_jax_bench_')
  try:
    for index in range(sizes['prepare_repeats']):
      args = {'name': DATASET}
      if index == 0 and not is_prepared(data_dir, DATASET):
        data_dir = args['data_dir'] = os.path.join(work, 'data')  # the rest reads this one
      stage(f'prepare_{index}', 'prepare', args)
    results['data_dir'] = data_dir
    stage('matmul', 'matmul', {'n': MATMUL_SIZE.get(backend, 4096),
                               'repeats': sizes['matmul_repeats']})
    counts = device_counts(backend, info['device_count'], info['global_batch'])
    main_count = 1 if on_cpu else max(counts)  # all devices, as the trainer uses
    for n in counts:
      stage(f'train_{n}', 'train',
            {'devices': n, 'data_dir': data_dir, 'batches': sizes['batches'],
             'check_steps': sizes['check_steps'], 'steps': sizes['steps'],
             'loop_steps': sizes['loop_steps'] if n == main_count else 0},
            cpu_devices=n if on_cpu else None)
    # Seeds of an experiment-grid cell: vectorised in one program against one after another.
    stage(f'train_seeds{SEEDS}', 'train',
          {'devices': main_count, 'data_dir': data_dir, 'batches': sizes['batches'],
           'check_steps': 1, 'steps': sizes['steps'], 'loop_steps': 0, 'seeds': SEEDS},
          cpu_devices=main_count if on_cpu else None)
    for workers in PIPELINE_WORKERS:
      stage(f'pipeline_{workers}', 'pipeline', {'workers': workers, 'data_dir': data_dir,
                                                'batches': sizes['pipeline_batches']})
    measure_data_paths(stage, sizes, data_dir, main_count, on_cpu)
    stage('parts', 'parts', {'devices': main_count, 'data_dir': data_dir,
                             'repeats': sizes['parts_repeats']})
    stage('inference', 'inference', {'seconds_of_audio': sizes['inference_seconds'],
                                     'repeats': sizes['inference_repeats']})
    measure_precision(stage, sizes, backend, data_dir, main_count, on_cpu)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  results['derived'] = derive(results, counts, main_count)
  results['precision'] = precision_figures(results)
  results['seconds'] = time.perf_counter() - started
  results['load_average'] = {'before': load_before[0], 'after': os.getloadavg()[0]}
  return results


def measure_precision(stage, sizes, backend: str, data_dir: str, main_count: int,
                      on_cpu: bool) -> None:
  """The mixed-precision step: the matmul rate in bfloat16 (its peak reference) and the
  trainer's step with `model.compute_dtype='bfloat16'` (the float32 ones are `matmul` and
  `train_{main_count}`)."""
  stage('matmul_bfloat16', 'matmul', {'n': MATMUL_SIZE.get(backend, 4096), 'dtype': 'bfloat16',
                                      'repeats': sizes['matmul_repeats']})
  stage('train_bfloat16', 'train',
        {'devices': main_count, 'data_dir': data_dir, 'batches': sizes['batches'],
         'check_steps': sizes['check_steps'], 'steps': sizes['steps'], 'loop_steps': 0,
         'compute_dtype': 'bfloat16'},
        cpu_devices=main_count if on_cpu else None)


def precision_figures(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Per compute dtype: the step's windows/s, FLOPs per window, achieved GFLOP/s against the
  matmul rate measured in that dtype, and the first steps' losses (bfloat16 against float32)."""
  main_count = results['derived']['main_devices']
  runs = {'float32': (results[f'train_{main_count}'], results['matmul']),
          'bfloat16': (results['train_bfloat16'], results['matmul_bfloat16'])}
  reference = runs['float32'][0]['losses']
  figures = {}
  for dtype, (run, matmul) in runs.items():
    peak = matmul['gflops_median'] * (1 if results['info']['backend'] == 'cpu' else main_count)
    achieved = run['train_flops_per_window'] * run['windows_per_s'] / 1e9
    steps = min(len(run['losses']), len(reference))
    figures[dtype] = {
        'step_s': run['step_s'], 'windows_per_s': run['windows_per_s'],
        'compile_s': run['compile_s'], 'train_flops_per_window': run['train_flops_per_window'],
        'achieved_gflops': achieved, 'peak_gflops': peak, 'fraction_of_peak': achieved / peak,
        'max_loss_difference': max(abs(a - b) for a, b in zip(run['losses'][:steps],
                                                               reference[:steps])),
    }
  return figures


def format_precision(results: dict[str, Any]) -> str:
  """The table of the step in float32 and bfloat16."""
  figures = precision_figures(results)
  rows = [(dtype, f"{f['step_s'] * 1e3:.0f}", f"{f['windows_per_s']:.1f}",
           f"{f['windows_per_s'] / figures['float32']['windows_per_s']:.2f}",
           f"{f['compile_s']:.1f}", f"{f['train_flops_per_window'] / 1e6:.1f}",
           f"{f['achieved_gflops']:.1f}", f"{f['peak_gflops']:.0f}",
           f"{100 * f['fraction_of_peak']:.0f}%", f"{f['max_loss_difference']:.1e}")
          for dtype, f in figures.items()]
  main_count = results['derived']['main_devices']
  return '\n'.join([
      f'train step by compute dtype ({main_count} device(s); parameters, optimiser and loss '
      'moments float32 in both; peak: the matmul rate measured in that dtype; loss difference: '
      'max |loss - float32 loss| over the first steps)',
      _columns(('compute dtype', 'ms/step', 'windows/s', 'vs float32', 'compile s',
                'MFLOP/window', 'GFLOP/s', 'matmul GFLOP/s', 'of peak', 'loss difference'),
               rows)])


def measure_data_paths(stage, sizes, data_dir: str, devices: int, on_cpu: bool) -> None:
  """The trainer's loop with each data path (`benchmarks.stages.data_path`), alternated
  (host, device, host, device, ...) so that a shared machine's load falls on both alike."""
  steps = sizes['data_path_steps']
  for run in range(sizes['data_path_runs']):
    for placement in DATA_PATHS:
      stage(f'data_{placement}_{run}', 'data_path',
            {'placement': placement, 'devices': devices, 'data_dir': data_dir,
             'round_steps': 10, 'batches': steps, 'loop_steps': steps},
            cpu_devices=devices if on_cpu else None)


def data_path_lines(results: dict[str, Any]) -> list[str]:
  """The table of the trainer's loop with each data path (rows of `measure_data_paths`)."""
  rows = []
  # `data_{placement}_{run}`, by run and then placement (not `data_dir`, also in `results`).
  keys = [(int(match[2]), DATA_PATHS.index(match[1]), match[0]) for match in (
      re.fullmatch(rf'data_({"|".join(DATA_PATHS)})_(\d+)', k) for k in results) if match]
  for run, _, key in sorted(keys):
    r = results[key]
    rows.append((f"{r['placement']} (run {run})",
                 f"{r['steps_per_s']:.2f}", f"{r['windows_per_s']:.0f}",
                 f"{r['compute_step_s'] * 1e3:.0f}", f"{r['loop_step_s'] * 1e3:.0f}",
                 f"{100 * r['device_wait_fraction']:.0f}%",
                 f"{r['blocked_fraction'] * r['loop_step_s'] * 1e3:.1f} "
                 f"({100 * r['blocked_fraction']:.1f}%)",
                 f"{r['batch_s'] * 1e3:.2f}", f"{r['feed_limit_windows_per_s']:,.0f}",
                 f"{r['setup_s']:.1f}", f"{r['host_peak_mib']:.0f}", _device_mib(r)))
  if not rows:
    return []
  first = results[min(keys)[2]]
  return ['', f"trainer loop by data path ({first['devices']} device(s), global batch "
          f"{first['global_batch']}, {first['loop_steps']} steps as the trainer runs them, "
          'alternating with as many steps alone in rounds of 10; '
          'device waits: 1 - step alone / loop step; blocked: loop time inside feed.batch, ms per '
          'step (share); '
          'batch alone: one batch made and placed with the devices idle, the rate the host can '
          'feed; setup: reading (device: and uploading) the split)',
          _columns(('data path', 'steps/s', 'windows/s', 'step alone ms', 'loop ms/step',
                    'device waits', 'blocked', 'batch alone ms', 'feed limit windows/s',
                    'setup s', 'host MiB', 'device MiB'), rows)]


def derive(results: dict[str, Any], counts: list[int], main_count: int) -> dict[str, Any]:
  """Figures computed from several measurements."""
  main = results[f'train_{main_count}']
  peak = results['matmul']['gflops_median']
  # Fake CPU devices share one machine's cores; accelerators each bring their own peak.
  peak_total = peak * (1 if results['info']['backend'] == 'cpu' else main_count)
  achieved = main['train_flops_per_window'] * main['windows_per_s'] / 1e9
  reference = results[f'train_{counts[0]}']
  # Keys as strings, as the JSON of --output holds them (so --table_from formats the same dict).
  scaling = {}
  for n in counts:
    run = results[f'train_{n}']
    steps = min(len(run['losses']), len(reference['losses']))
    scaling[str(n)] = {
        'speedup': run['windows_per_s'] / reference['windows_per_s'],
        'max_loss_difference': max(abs(a - b) for a, b in zip(run['losses'][:steps],
                                                               reference['losses'][:steps])),
    }
  parts = results['parts']['parts']
  step, model = parts['train step'], parts['model forward+backward']
  branches = [p for name, p in parts.items() if name.endswith('branch forward+backward')]

  def minus(whole, *others):
    return {k: whole[k] - sum(other[k] for other in others)
            for k in ('seconds', 'cpu_seconds', 'flops')}
  seeds = results[f'train_seeds{SEEDS}']
  return {
      'seeds': {'count': SEEDS, 'vectorised_step_s': seeds['step_s'],
                'sequential_step_s': SEEDS * main['step_s'],
                'speedup': SEEDS * main['step_s'] / seeds['step_s'],
                'vectorised_compile_s': seeds['compile_s']},
      'main_devices': main_count,
      'parts': {'[trunk: fusion, temporal model, heads] = model - branches':
                    minus(model, *branches),
                '[loss, optimizer, collectives] = step - model': minus(step, model)},
      'achieved_gflops': achieved, 'peak_gflops': peak_total,
      'fraction_of_peak': achieved / peak_total,
      'pipeline_to_step': {str(w): results[f'pipeline_{w}']['windows_per_s'] / main['windows_per_s']
                           for w in PIPELINE_WORKERS},
      'scaling': scaling,
  }


def _mib(value) -> str:
  return 'n/a' if value is None else f'{value:.0f}'


def _device_mib(result) -> str:
  value = result.get('device_peak_mib')
  if isinstance(value, list):
    value = None if None in value else max(value)
  return _mib(value)


def format_table(results: dict[str, Any]) -> str:
  """The printed table: one row per figure; memory columns for each measurement's process."""
  info, derived = results['info'], results['derived']
  main_count = derived['main_devices']
  main = results[f'train_{main_count}']
  header = (f"ccc-jax benchmarks ({results['mode']}): {info['backend']} backend, "
            f"{info['device_count']} x {info['device_kind']}, {info['host_cpus']} host CPUs, "
            f"jax {info['jax']}; took {results['seconds']:.0f} s; load average "
            f"{results['load_average']['before']:.1f} before, "
            f"{results['load_average']['after']:.1f} after\n"
            f"default synthetic config: global batch {main['global_batch']}, {main['seeds']} "
            f"seed(s), {main['parallel']}, window T={main['window']} label frames, "
            f"{main['num_params']:,} parameters; medians of repeated runs")
  rows = []

  def row(name, value, result=None):
    memory = ('', '') if result is None else (
        f"{result['host_peak_mib']:.0f} / {result['host_tree_peak_mib']:.0f}",
        _device_mib(result))
    rows.append((name, value) + memory)

  preps = [results[k] for k in sorted(k for k in results if k.startswith('prepare_'))]
  per_hour = [p['seconds_per_hour'] for p in preps]
  row(f"prepare {preps[0]['name']} ({preps[0]['hours']:.2f} h), {len(preps)} run(s)",
      f"{common.median(per_hour):.1f} s per hour of audio (runs: "
      f"{', '.join(f'{v:.1f}' for v in per_hour)})", max(preps, key=lambda p: p['host_peak_mib']))
  inf = results['inference']
  row(f"inference, Predictor ({inf['seconds_of_audio'] / 3600:.2f} h, batch "
      f"{inf['batch_size']})",
      f"{inf['seconds_per_hour']:.1f} s per hour of audio "
      f"(CPU {inf['cpu_seconds_per_hour']:.1f} s; first call {inf['first_call_s']:.1f} s)", inf)
  mm = results['matmul']
  row(f"matmul f32 {mm['n']}x{mm['n']} (peak reference)", f"{mm['gflops_median']:.0f} GFLOP/s "
      f"(best {mm['gflops_max']:.0f})", mm)
  row(f'train step, {main_count} device(s): compile',
      f"{main['compile_s']:.1f} s (+ lowering {main['lower_s']:.1f} s; "
      f"init {main['init_s']:.1f} s)",
      main)
  row(f'train step, {main_count} device(s)',
      f"{main['step_s'] * 1e3:.0f} ms/step = {main['windows_per_s']:.1f} windows/s = "
      f"{main['label_frames_per_s']:,.0f} label frames/s (CPU {main['step_cpu_s']:.2f} s/step)")
  row('FLOPs per window (XLA cost analysis)',
      f"train step {main['train_flops_per_window'] / 1e6:.1f} M, forward "
      f"{main['forward_flops_per_window'] / 1e6:.1f} M")
  row('achieved by the train step', f"{derived['achieved_gflops']:.1f} GFLOP/s = "
      f"{100 * derived['fraction_of_peak']:.0f}% of the matmul rate "
      f"({derived['peak_gflops']:.0f} GFLOP/s)")
  seeds = derived['seeds']
  row(f"{seeds['count']} seeds: vectorised against one after another",
      f"{seeds['vectorised_step_s'] * 1e3:.0f} ms per step of all {seeds['count']} against "
      f"{seeds['count']} x {main['step_s'] * 1e3:.0f} = {seeds['sequential_step_s'] * 1e3:.0f} ms "
      f"({seeds['speedup']:.2f}x; one compile of {seeds['vectorised_compile_s']:.1f} s instead "
      f"of {seeds['count']})", results[f'train_seeds{seeds["count"]}'])
  for workers in PIPELINE_WORKERS:
    pipe = results[f'pipeline_{workers}']
    row(f'input pipeline alone, {workers} workers',
        f"{pipe['windows_per_s']:.0f} windows/s = {derived['pipeline_to_step'][str(workers)]:.1f}x "
        f"the step (first batch {pipe['first_batch_s']:.1f} s)", pipe)
  lines = [header, '', _columns(('measurement', 'value', 'host MiB (process / tree)',
                                  'device MiB'), rows)]

  loop = main.get('loop')
  if loop:
    total = loop['load_s'] + loop['host_to_device_s'] + loop['compute_s']
    lines += ['', f"trainer loop, {main_count} device(s), {loop['steps']} steps: each stage "
              'waited for (medians, ms per step)',
              _columns(('data loading', 'host-to-device', 'step compute', 'sum',
                        'trainer as run (overlapped)'),
                       [(f"{loop['load_s'] * 1e3:.0f} ({100 * loop['load_s'] / total:.0f}%)",
                         f"{loop['host_to_device_s'] * 1e3:.1f} "
                         f"({100 * loop['host_to_device_s'] / total:.0f}%)",
                         f"{loop['compute_s'] * 1e3:.0f} ({100 * loop['compute_s'] / total:.0f}%)",
                         f'{total * 1e3:.0f}',
                         f"{loop['overlapped_step_s'] * 1e3:.0f} = "
                         f"{loop['overlapped_windows_per_s']:.1f} windows/s")])]

  lines += data_path_lines(results)

  parts = results['parts']
  step_cpu_s = parts['parts']['train step']['cpu_seconds']
  lines += ['', f"where a step's compute goes (1 device, batch {parts['batch']}, forward+backward "
            'of each part alone, timed in turn; rows in brackets are differences; CPU time is '
            "this process's, all threads)",
            _columns(('part', 'wall ms', 'CPU ms', '% of step (CPU)', 'GFLOP', 'GFLOP/s (wall)'),
                     [(name, f"{p['seconds'] * 1e3:.1f}", f"{p['cpu_seconds'] * 1e3:.1f}",
                       f"{100 * p['cpu_seconds'] / step_cpu_s:.0f}", f"{p['flops'] / 1e9:.2f}",
                       f"{p['flops'] / p['seconds'] / 1e9:.1f}")
                      for name, p in {**parts['parts'], **derived['parts']}.items()])]

  scaling_rows = []
  for devices, figures in derived['scaling'].items():
    n = int(devices)
    run = results[f'train_{n}']
    scaling_rows.append((
        str(n), str(run['global_batch'] // n), f"{run['compile_s']:.1f}",
        f"{run['step_s'] * 1e3:.0f}", f"{run['step_cpu_s']:.2f}", f"{run['windows_per_s']:.1f}",
        f"{figures['speedup']:.2f}", f"{run['train_flops_per_window'] / 1e6:.1f}",
        f"{figures['max_loss_difference']:.1e}", f"{run['host_peak_mib']:.0f}",
        _device_mib(run)))
  kind = ('fake CPU devices sharing the same cores: overhead and correctness, not speed-up'
          if info['backend'] == 'cpu' else 'devices present')
  lines += ['', f"train step over device counts, global batch fixed ({kind}); loss difference: "
            f"max |loss - loss on {next(iter(derived['scaling']))} device(s)| over the first "
            f"{len(main['losses'])} steps",
            _columns(('devices', 'per-device batch', 'compile s', 'ms/step', 'CPU s/step',
                      'windows/s', 'speed-up', 'MFLOP/window', 'loss difference', 'host MiB',
                      'device MiB'),
                     scaling_rows)]
  lines += ['', format_precision(results)]
  return '\n'.join(lines)


def _columns(header, rows) -> str:
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  return '\n'.join('  '.join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip()
                   for r in [header, *rows])


def _table(results: dict[str, Any]) -> str:
  """The table of --suite's results."""
  return format_prepare_table(results) if _SUITE.value == 'prepare' else format_table(results)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  log = lambda m: print(m, file=sys.stderr)
  if _TABLE_FROM.value:
    with open(_TABLE_FROM.value) as f:
      results = json.load(f)
    print(_table(results))
    return
  try:
    if _SUITE.value == 'prepare':
      results = measure_prepare(_QUICK.value, _REFERENCE.value, _KEEP.value, _TABLE.value,
                                _LARGE.value, log=log)
    else:
      results = measure(_QUICK.value, _DATA_DIR.value, log=log)
  except common.StageFailed as error:
    print(f'benchmarks: {error}', file=sys.stderr)
    sys.exit(1)
  if _OUTPUT.value:  # first: a table that cannot be printed must not lose the measurements
    with open(_OUTPUT.value, 'w') as f:
      json.dump(results, f, indent=2)
    print(f'wrote {_OUTPUT.value} (print its table again: --table_from={_OUTPUT.value})\n')
  print(_table(results))


if __name__ == '__main__':
  app.run(main)
