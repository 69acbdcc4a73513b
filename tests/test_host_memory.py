"""`ccc_jax.host_memory`: the allocator settings, and that they stop XLA:CPU's buffers from being
faulted in again at every call (each case in a fresh process: the settings must come before JAX
starts, and glibc reads its environment once)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import env_with_devices

pytestmark = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')

# Calls of a jitted program whose temporary buffer is 32 MiB (8,192 pages of 4 KiB), after 20
# warm-up calls (kept, the heap grows over the first few calls, as XLA's threads take turns to
# allocate, then stays); prints the settings applied and the page faults per call.
_PROGRAM = r"""
import json, resource, sys
from ccc_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else {}
import jax, jax.numpy as jnp
@jax.jit
def f(x):
  y = jax.lax.optimization_barrier(jnp.sin(x))  # a temporary of x's size
  return jnp.sum(y * y)
x = jnp.ones((8 * 1024 * 1024,), jnp.float32)
for _ in range(20):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({'applied': applied, 'faults_per_call': faults}))
"""
_BUFFER_PAGES = 32 * 1024 * 1024 // os.sysconf('SC_PAGE_SIZE')


def _run(mode: str, **environment) -> dict:
  env = {k: v for k, v in env_with_devices(1).items()
         if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  env.update(environment)
  process = subprocess.run([sys.executable, '-c', _PROGRAM, mode], env=env, capture_output=True,
                           text=True, check=True)
  return json.loads(process.stdout.strip().splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again_at_every_call():
  default = _run('default')
  kept = _run('keep')
  assert kept['applied'] == {'arena_max': 1, 'mmap_max': 0, 'trim_threshold': 2**31 - 1}
  # glibc's defaults map the buffer afresh at every call: every page faults again.
  assert default['faults_per_call'] > 0.9 * _BUFFER_PAGES, default
  assert kept['faults_per_call'] < 0.1 * _BUFFER_PAGES, kept


def test_a_setting_from_the_environment_is_left_as_set():
  result = _run('keep', MALLOC_ARENA_MAX='4')
  assert result['applied'] == {'mmap_max': 0, 'trim_threshold': 2**31 - 1}
