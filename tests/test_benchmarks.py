"""The benchmark table's formatting (the measurements themselves run in `python -m benchmarks.run`,
not in the test suite)."""

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
