r"""The trainer's loop with each data path alone: the rows `benchmarks.run` adds to its table.

    python -m benchmarks.data_paths --data_dir=data                # default synthetic corpus
    python -m benchmarks.data_paths --data_dir=data --runs=2 --steps=60

Runs `benchmarks.run.measure_data_paths` (host pipeline, then device-resident data, alternated
`--runs` times, each in its own process on `--devices` devices) and prints its table
(`benchmarks.run.data_path_lines`). `synthetic_avd/default` must be prepared under `--data_dir`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from benchmarks import common
from benchmarks import run

# --data_dir and --output are benchmarks.run's flags (imported with it).
_RUNS = flags.DEFINE_integer('runs', 1, 'Runs of each path, alternated.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps of the loop (and batches alone; half as many '
                              'steps alone).')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Devices (fake CPU devices on the CPU backend).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not run.is_prepared(flags.FLAGS.data_dir, run.DATASET):
    raise app.UsageError(f'{run.DATASET} is not prepared under {flags.FLAGS.data_dir}: python -m '
                         f'launch.prepare --dataset=synthetic_avd --data_dir={flags.FLAGS.data_dir}')
  results = {}
  load_before = os.getloadavg()[0]

  def stage(key, name, args, **kwargs):
    print(f'{key} ...', file=sys.stderr)
    results[key] = common.run_stage(name, args, **kwargs)
  info = common.run_stage('info', {})
  run.measure_data_paths(stage, {'data_path_runs': _RUNS.value, 'data_path_steps': _STEPS.value},
                         flags.FLAGS.data_dir, _DEVICES.value, info['backend'] == 'cpu')
  print(f"{info['backend']} backend, {info['device_count']} x {info['device_kind']}, "
        f"{info['host_cpus']} host CPUs; load average {load_before:.1f} before, "
        f'{os.getloadavg()[0]:.1f} after')
  print('\n'.join(run.data_path_lines(results)))
  if flags.FLAGS.output:
    with open(flags.FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
