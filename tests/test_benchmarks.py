"""The benchmark table's formatting (the measurements themselves run in `python -m benchmarks.run`,
not in the test suite). `data/benchmarks_quick.json`: what `python -m benchmarks.run --quick
--output=...` wrote on 2026-12-01 (BUILD_NOTES.md, "The whole benchmark table on this code")."""

import json
import subprocess
import sys

from conftest import REPO

ROW = dict(placement='host', steps_per_s=2.0, windows_per_s=64.0, compute_step_s=0.4,
           loop_step_s=0.5, device_wait_fraction=0.2, blocked_fraction=0.1, batch_s=0.01,
           feed_limit_windows_per_s=3200.0, setup_s=1.5, host_peak_mib=900.0, devices=1,
           global_batch=32, loop_steps=20)


def test_data_path_table_has_one_row_per_data_path_and_run():
  # `results` also holds `data_dir`, which once broke the table after a 20-minute run. In a
  # process of its own: `benchmarks.run` defines absl flags that other test files define too.
  results = {'data_dir': '/data', 'data_host_1': ROW, 'data_device_0': {**ROW, 'placement': 'device'},
             'data_host_0': ROW, 'data_device_1': {**ROW, 'placement': 'device'}}
  code = ('import json, sys; from benchmarks import run; results = json.loads(sys.argv[1]); '
          'print(json.dumps([run.data_path_lines(results), run.data_path_lines({"data_dir": "/d"})]))')
  done = subprocess.run([sys.executable, '-c', code, json.dumps(results)], cwd=REPO,
                        capture_output=True, text=True, check=True)
  lines, none = json.loads(done.stdout)
  rows = [line.split('  ')[0] for line in lines[-1].splitlines()[1:]]
  assert rows == ['host (run 0)', 'device (run 0)', 'host (run 1)', 'device (run 1)']
  assert '1 device(s), global batch 32, 20 steps' in lines[1]
  assert none == []


def test_a_saved_run_prints_its_whole_table_again():
  """`--table_from` formats a run's JSON, as read back from the file (string keys where the run
  had integers), into every section of the table."""
  done = subprocess.run([sys.executable, '-m', 'benchmarks.run',
                         f'--table_from={REPO / "tests" / "data" / "benchmarks_quick.json"}'],
                        cwd=REPO, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  for line in ('train step, 1 device(s)                           262 ms/step = 122.0 windows/s',
               'input pipeline alone, 0 workers                   683 windows/s = 5.6x the step',
               'host (run 0)    3.24     104', 'device (run 0)  3.91     125',
               'audio conv 1: 1->16 channels', '8        4                 9.3        255',
               'bfloat16       305      104.9      0.86'):
    assert line in done.stdout, line
