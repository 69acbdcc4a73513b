"""`ccc_jax.host_memory`: the settings, and that they stop XLA:CPU's buffers from being faulted in
again at every call (each case in a fresh process, on one CPU device: the settings must come
before JAX starts, and glibc reads its environment once)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import env_with_devices

pytestmark = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')

# Calls of a jitted program whose temporary buffer is 96 MiB (24,576 pages of 4 KiB): more than a
# worker thread's glibc arena can hold (64 MiB), as the train step's 145 MB; with a loop, so
# that XLA does not run it inline as a cheap computation. After 5 warm-up calls; prints the
# settings applied and the median page faults of 7 calls (the median, since the heap may still
# grow once in a while, faulting in one call's buffer: a mean over 5 calls once read 4,915).
_PROGRAM = r"""
import json, resource, statistics, sys
from ccc_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else {}
import jax, jax.numpy as jnp
@jax.jit
def f(x):
  y = jax.lax.optimization_barrier(jnp.sin(x))  # a temporary of x's size
  z = jax.lax.fori_loop(0, 3, lambda i, z: z * 0.5 + 1.0, y[:16])
  return jnp.sum(y * y) + jnp.sum(z)
x = jnp.ones((24 * 1024 * 1024,), jnp.float32)
for _ in range(5):
  f(x).block_until_ready()
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'applied': applied, 'faults_per_call': statistics.median(faults)}))
"""
_BUFFER_PAGES = 96 * 1024 * 1024 // os.sysconf('SC_PAGE_SIZE')
_KEPT = {'cpu_async_dispatch': False, 'mmap_max': 0, 'trim_threshold': 2**31 - 1}


def _environment(**overrides) -> dict[str, str]:
  """One CPU device, none of the settings from this environment, then `overrides`."""
  env = {k: v for k, v in env_with_devices(1).items() if not k.startswith('MALLOC_')
         and k not in ('GLIBC_TUNABLES', 'JAX_CPU_ENABLE_ASYNC_DISPATCH')}
  return {**env, **overrides}


def _run(mode: str, **overrides) -> dict:
  process = subprocess.run([sys.executable, '-c', _PROGRAM, mode], env=_environment(**overrides),
                           capture_output=True, text=True, check=True)
  return json.loads(process.stdout.strip().splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again_at_every_call():
  default = _run('default')
  kept = _run('keep')
  assert kept['applied'] == _KEPT
  # By default the buffer is mapped afresh at every call: every page faults again.
  assert default['faults_per_call'] > 0.9 * _BUFFER_PAGES, default
  assert kept['faults_per_call'] < 0.1 * _BUFFER_PAGES, kept


def test_settings_from_the_environment_are_left_as_set_and_both_are_needed():
  allocator = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(2**31 - 1)}
  # The allocator's settings alone (as PyTorch's "tuned allocator" gives them): the buffer comes
  # from a worker thread's arena, which maps it afresh.
  assert _run('default', **allocator)['faults_per_call'] > 0.9 * _BUFFER_PAGES
  result = _run('keep', **allocator)
  assert result['applied'] == {'cpu_async_dispatch': False}
  assert result['faults_per_call'] < 0.1 * _BUFFER_PAGES, result
  result = _run('keep', JAX_CPU_ENABLE_ASYNC_DISPATCH='true')
  assert result['applied'] == {'mmap_max': 0, 'trim_threshold': 2**31 - 1}
  assert result['faults_per_call'] > 0.9 * _BUFFER_PAGES, result


def test_a_late_call_warns_and_leaves_the_dispatch_alone():
  program = ('import jax; jax.devices()\n'
             'from ccc_jax import host_memory; print(host_memory.keep_freed_memory())')
  process = subprocess.run([sys.executable, '-c', program], env=_environment(),
                           capture_output=True, text=True, check=True)
  assert 'cpu_async_dispatch' not in process.stdout
  assert 'JAX has started already' in process.stderr
