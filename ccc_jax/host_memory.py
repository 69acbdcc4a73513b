"""The host's memory allocator, set so that XLA:CPU's buffers stay in the process between calls.

Owns `keep_freed_memory()`, which every launch script and benchmark calls at start-up (before
JAX starts its CPU backend), and which a user of the library calls first thing for the same
speed.

Why: each call of a compiled XLA:CPU program allocates its temporary buffer (145 MB for the
default train step at batch 32) and frees it when the call ends. The allocation is made on one
of XLA's worker threads, so under glibc's defaults it lands in a per-thread arena, which cannot
hold a block that large; glibc then maps it fresh from the kernel and unmaps it on free. Every
step thus faulted in every page of its buffers again: 35,000 page faults per step, the kernel
zeroing 4 KB for each, which took a quarter of the step's time (BUILD_NOTES.md, "The page
faults"). With one arena, no mapping of large blocks and no trimming of the heap's top, the
freed block stays in the heap and the next call reuses it.

The price: memory freed by the process is kept for its later allocations rather than returned
to the system, so the resident size stays at its peak, which for a training or inference
process is what it needs again at the next step anyway. Only glibc (Linux) has these settings;
elsewhere, and under another allocator (`LD_PRELOAD`), nothing is changed. A setting given in
the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`,
`GLIBC_TUNABLES`) is left as the user set it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h) and what we set them to.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2**31 - 1
SETTINGS = (
    # (name, mallopt parameter, value, the environment variable that sets it instead)
    ('arena_max', _M_ARENA_MAX, 1, 'MALLOC_ARENA_MAX'),  # every thread allocates from the heap
    ('mmap_max', _M_MMAP_MAX, 0, 'MALLOC_MMAP_MAX_'),  # large blocks from the heap too
    ('trim_threshold', _M_TRIM_THRESHOLD, _INT_MAX, 'MALLOC_TRIM_THRESHOLD_'),  # kept on free
)


def keep_freed_memory() -> dict[str, int]:
  """Sets glibc's allocator to keep freed memory in the process (see the module docstring).

  Call it before the first JAX computation (or `jax.devices()`): XLA's worker threads take
  their arena when they first allocate, and keep it. Calling it again does nothing more.

  Returns:
    The settings applied, by name ({} where there is no glibc, another allocator is preloaded,
    or the environment sets all of them).
  """
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return {}
  if 'malloc' in os.environ.get('LD_PRELOAD', '') or 'glibc.malloc' in os.environ.get(
      'GLIBC_TUNABLES', ''):
    return {}
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return {}
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  applied = {}
  for name, parameter, value, variable in SETTINGS:
    if variable in os.environ:
      continue
    if mallopt(parameter, value) == 1:  # mallopt returns 1 on success
      applied[name] = value
    else:
      print(f'ccc_jax.host_memory: glibc refused mallopt({name}={value})', file=sys.stderr)
  return applied
