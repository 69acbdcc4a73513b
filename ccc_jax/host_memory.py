"""How a CPU process keeps XLA's buffers between calls instead of faulting them in at every call.

Owns `keep_freed_memory()`, which every launch script but preparation, the benchmarks and the
test suite call at start-up, before JAX starts its CPU backend; a user of the library calls it
first thing for the same speed.

Why: each call of a compiled XLA:CPU program allocates its temporary buffer (145 MB for the
default train step at batch 32, 66 MB for the evaluation forward pass at batch 64) and frees it
when the call ends. Under glibc's defaults a block that large is mapped fresh from the kernel
(`mmap`) and unmapped on free, so every call faulted in and zeroed every page of its buffers
again: 35,400 page faults per training step, which made the step 1.5-1.8x slower (BUILD_NOTES.md,
"The page faults"). Two settings stop it:

- glibc's allocator keeps freed memory (`M_MMAP_MAX=0`: large blocks come from the heap too;
  `M_TRIM_THRESHOLD` at its maximum: the heap's top is not given back on free), so the next
  call reuses the block;
- a one-device CPU computation runs on the thread that calls it (`jax_cpu_enable_async_dispatch`
  off), whose heap that is. Dispatched asynchronously it ran on one of XLA's worker threads,
  which glibc gives an arena of its own whose heaps cannot exceed 64 MiB, so the block was
  mapped afresh whatever the settings. (One arena for all threads, `M_ARENA_MAX=1`, also ends
  the faults, but it made compiling 3-40% slower and the step slower than this, the threads
  contending for the one heap.)

The price: memory the process frees is kept for its later allocations rather than returned to
the system; for a process that trains or predicts, that is what its next call needs anyway. A
jitted call on one CPU device returns when its result is ready rather than at once, so Python
work no longer overlaps it: the trainer's host pipeline now makes the next batch after the step
rather than during it (its loop is still no slower, the step being faster; the device-resident
path has nothing to overlap; accelerators are not affected). A computation over
several CPU devices (fake devices, `--xla_force_host_platform_device_count`) is still dispatched
asynchronously and still faults. Only glibc (Linux) has the allocator settings; elsewhere, and
under another allocator (`LD_PRELOAD`), they are left alone. A setting given in the environment
(`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`, `JAX_CPU_ENABLE_ASYNC_DISPATCH`)
is left as the user set it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h) and what we set them to.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1
ALLOCATOR_SETTINGS = (
    # (name, mallopt parameter, value, the environment variable that sets it instead)
    ('mmap_max', _M_MMAP_MAX, 0, 'MALLOC_MMAP_MAX_'),
    ('trim_threshold', _M_TRIM_THRESHOLD, _INT_MAX, 'MALLOC_TRIM_THRESHOLD_'),
)
_DISPATCH_VARIABLE = 'JAX_CPU_ENABLE_ASYNC_DISPATCH'


def keep_freed_memory() -> dict[str, int | bool]:
  """Sets the allocator and JAX's CPU dispatch so that buffers stay between calls (see the
  module docstring).

  Call it before the first JAX computation (or `jax.devices()`): JAX reads the dispatch setting
  when it starts its CPU backend. Calling it again does nothing more.

  Returns:
    The settings applied, by name: `mmap_max`, `trim_threshold` (glibc only, unless the
    environment sets them), `cpu_async_dispatch` (unless the environment sets it, or JAX had
    started already: then a warning on stderr).
  """
  applied: dict[str, int | bool] = {}
  if _DISPATCH_VARIABLE not in os.environ:
    import jax  # pylint: disable=g-import-not-at-top
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if not jax.config.read('jax_cpu_enable_async_dispatch'):
      applied['cpu_async_dispatch'] = False
    elif xla_bridge.backends_are_initialized():
      print('ccc_jax.host_memory: JAX has started already, so its CPU computations stay '
            'asynchronous; call keep_freed_memory() before the first computation',
            file=sys.stderr)
    else:
      jax.config.update('jax_cpu_enable_async_dispatch', False)
      applied['cpu_async_dispatch'] = False
  mallopt = _glibc_mallopt()
  if mallopt is None:
    return applied
  for name, parameter, value, variable in ALLOCATOR_SETTINGS:
    if variable in os.environ:
      continue
    if mallopt(parameter, value) == 1:  # mallopt returns 1 on success
      applied[name] = value
    else:
      print(f'ccc_jax.host_memory: glibc refused mallopt({name}={value})', file=sys.stderr)
  return applied


def _glibc_mallopt():
  """glibc's `mallopt`, or None off glibc, under a preloaded allocator or glibc tunables."""
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return None
  if 'malloc' in os.environ.get('LD_PRELOAD', '') or 'glibc.malloc' in os.environ.get(
      'GLIBC_TUNABLES', ''):
    return None
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  return mallopt
