"""Shared pieces of the benchmarks: one measurement per subprocess, its peak memory, timing.

Owns how `benchmarks/run.py` isolates a measurement: each runs as
`python -m benchmarks.stages --stage=NAME` in a fresh process (its own JAX start-up, its own
device count), writes its result as JSON, and its peak host memory is read from the kernel
when it exits (`os.wait4`'s `ru_maxrss`: the largest resident set of that process or of any
process it waited for, such as grain workers). While it runs, the resident sets of the whole
process tree are summed every `SAMPLE_SECONDS`, which is what several grain workers take
together (sampled, so a short peak can be missed).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

SAMPLE_SECONDS = 0.1
_PAGE_BYTES = os.sysconf('SC_PAGE_SIZE')
MIB = 1024 * 1024


class StageFailed(RuntimeError):
  """A measurement subprocess exited with an error."""


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `fn` (which must block until its work is done)."""
  return [time_call(fn)[0] for _ in range(repeats)]


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
  """`(wall seconds, CPU seconds)` of one call of `fn`, which must block until its work is done.

  CPU seconds are this process's, all threads together. On a machine shared with other jobs
  the wall time varies with their load; the CPU time much less.
  """
  start, cpu_start = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu_start


def _children() -> dict[int, list[int]]:
  """Parent pid -> child pids, from /proc."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        # The command name (field 2) may hold spaces; fields after its ')' are fixed.
        parent = int(f.read().rpartition(')')[2].split()[1])
    except (OSError, ValueError, IndexError):
      continue  # the process ended meanwhile
    children.setdefault(parent, []).append(int(entry))
  return children


def tree_rss_bytes(pid: int) -> int:
  """Summed resident set of `pid` and all its descendants (0 for processes already gone)."""
  children = _children()
  total, pending = 0, [pid]
  while pending:
    current = pending.pop()
    pending.extend(children.get(current, []))
    try:
      with open(f'/proc/{current}/statm') as f:
        total += int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
      pass
  return total


def run_stage(stage: str, args: dict[str, Any], *, cpu_devices: int | None = None,
              timeout_s: float = 3600, address_space_bytes: int | None = None,
              ) -> dict[str, Any]:
  """Runs one measurement in a fresh `python -m benchmarks.stages --stage=...` process.

  Args:
    stage: a stage name of `benchmarks.stages`.
    args: its arguments (JSON).
    cpu_devices: if set, the process sees this many fake CPU devices
      (`--xla_force_host_platform_device_count`); only meaningful on the CPU backend.
    timeout_s: the subprocess is killed after this long.
    address_space_bytes: if set, a memory cap: the subprocess and every process it starts get
      this RLIMIT_AS (virtual memory per process, as `prlimit --as` sets it); an allocation
      past it fails.

  Returns:
    The stage's JSON result, plus `host_peak_mib` (ru_maxrss of the largest process of the
    stage, exact), `host_tree_peak_mib` (sampled sum over the process tree) and `wall_s`.

  Raises:
    StageFailed: the subprocess failed; the message holds the end of its output.
  """
  env = dict(os.environ)
  # Compile times are part of what is measured: no persistent compilation cache.
  for name in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
               'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'):
    env.pop(name, None)
  if cpu_devices is not None:
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={cpu_devices}'])
  with tempfile.TemporaryDirectory(prefix='ccc_jax_bench_') as tmp:
    result_path = os.path.join(tmp, 'result.json')
    log_path = os.path.join(tmp, 'log.txt')
    command = [sys.executable, '-m', 'benchmarks.stages', f'--stage={stage}',
               f'--args={json.dumps(args)}', f'--output={result_path}']
    start = time.perf_counter()
    with open(log_path, 'w') as log:
      process = subprocess.Popen(
          command, stdout=log, stderr=subprocess.STDOUT, env=env,
          preexec_fn=None if address_space_bytes is None else functools.partial(
              resource.setrlimit, resource.RLIMIT_AS,
              (address_space_bytes, address_space_bytes)))
    peak_tree = 0
    stop = threading.Event()

    def sample():
      nonlocal peak_tree
      while not stop.is_set():
        peak_tree = max(peak_tree, tree_rss_bytes(process.pid))
        stop.wait(SAMPLE_SECONDS)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
      # wait4 (not Popen.wait) gives this child's own resource usage, its children's included.
      while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
          break
        if time.perf_counter() - start > timeout_s:
          process.kill()
          pid, status, usage = os.wait4(process.pid, 0)
          break
        time.sleep(0.05)
    finally:
      stop.set()
      sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
    wall = time.perf_counter() - start
    with open(log_path) as f:
      log_text = f.read()
    if process.returncode != 0 or not os.path.exists(result_path):
      tail = '\n'.join(log_text.splitlines()[-30:])
      raise StageFailed(f'stage {stage} {args} (cpu_devices={cpu_devices}) exited with '
                        f'{process.returncode} after {wall:.0f} s:\n{tail}')
    with open(result_path) as f:
      result = json.load(f)
  result['host_peak_mib'] = usage.ru_maxrss * 1024 / MIB  # Linux reports kilobytes
  result['host_tree_peak_mib'] = peak_tree / MIB
  result['wall_s'] = wall
  return result


def write_stage_result(path: str, result: dict[str, Any]) -> None:
  with open(path, 'w') as f:
    json.dump(result, f)


def device_peak_mib(device) -> float | None:
  """Peak bytes the backend says it allocated on `device`, in MiB; None where it does not say
  (the CPU backend's `memory_stats()` is None)."""
  stats = device.memory_stats()
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / MIB


def flops_of(compiled) -> float | None:
  """FLOPs XLA's cost analysis counts for a compiled program (per device under SPMD)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])
