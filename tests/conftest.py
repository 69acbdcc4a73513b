"""Test session set-up: 8 fake CPU devices (before jax is imported) and float64 opt-in helpers.

Every test runs in one process with `--xla_force_host_platform_device_count=8`, so multi-device
tests and one-device tests share compiled programs and a single JAX start-up.
"""

import os

# LLVM's optimisation level 0 for XLA's CPU code, here and in the subprocesses tests start
# (`env_with_devices`): the tests check what the code computes, not how fast XLA's code for it
# runs, and compiling is most of the suite's time on 2 cores (a tiny train step: 4.4 s to
# compile at level 0 against 7.8 s at the default; BUILD_NOTES.md "Fresh-clone check").
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = ' '.join((os.environ.get('XLA_FLAGS', ''), TEST_XLA_FLAGS,
                                    '--xla_force_host_platform_device_count=8')).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# The launch scripts' allocator and dispatch settings, before JAX starts (`ccc_jax.host_memory`):
# tests then run the programs as users' runs do.
from ccc_jax import host_memory  # noqa: E402
host_memory.keep_freed_memory()

# Compiled programs are shared across tests and with the subprocesses some tests start (the
# launch scripts): XLA compiles are most of the suite's time on 2 cores. The process that makes
# the cache (pytest itself, before xdist starts its workers, which inherit the variable and so
# share the cache) removes it when the run ends (`pytest_unconfigure`): each run's cache is
# 17 MB, and the runs' caches used to pile up in /tmp.
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile
  _OWN_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='ccc_jax_xla_cache_')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def tiny_config(data_dir, **overrides):
  """The tiny synthetic run record (launch/configs/synthetic.py:tiny) reading `data_dir`."""
  from launch import cli
  from launch.configs import synthetic
  return cli.run_config(synthetic.get_config('tiny')).replace(data_dir=str(data_dir), **overrides)


def restored_params(workdir, which='latest'):
  """A workdir's checkpoint: (its parameters on the host, the restored model)."""
  import jax
  from ccc_jax import checkpoints
  restored = checkpoints.restore_model(str(workdir), which)
  return jax.device_get(restored.params), restored


def assert_same_params(a, b, exact=True):
  import jax
  import numpy as np
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if exact:
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def train_command(data_dir, workdir, *extra):
  """`launch.train` on the tiny config, as a subprocess' argv."""
  return [sys.executable, '-m', 'launch.train', '--config=launch/configs/synthetic.py:tiny',
          f'--config.data_dir={data_dir}', f'--workdir={workdir}', *extra]


def env_with_devices(devices):
  """This environment with `devices` fake CPU devices, for a subprocess."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}'
  return env


def _built_once(tmp_path_factory, name, build):
  """`build(path)` once per test run, shared by the run's pytest-xdist workers: the first worker
  to ask builds it under a file lock, the others wait and reuse it (a tiny training run is the
  most expensive fixture; built per worker, it cost every worker its time). Without xdist, a
  folder of this session."""
  import fcntl
  run = os.environ.get('PYTEST_XDIST_TESTRUNUID')
  if not run:
    path = tmp_path_factory.mktemp(name) / name
    build(path)
    return path
  root = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
  path = root / f'{name}_{run}'
  with open(root / f'{name}_{run}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / f'{name}_{run}.done').exists():
      shutil.rmtree(path, ignore_errors=True)  # a failed build's remains
      build(path)
      (root / f'{name}_{run}.done').touch()
  return path


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """synthetic_avd/tiny prepared once per test run with the real builder."""
  if os.environ.get('CCC_TINY_DATA_DIR'):
    return pathlib.Path(os.environ['CCC_TINY_DATA_DIR'])
  from datasets import prepare
  return _built_once(tmp_path_factory, 'tiny_data', lambda path: prepare.prepare_dataset(
      'synthetic_avd:tiny', data_dir=str(path)))


@pytest.fixture(scope='session')
def tiny_workdir(tiny_data_dir, tmp_path_factory):
  """A workdir trained once per test run on the tiny config (20 steps, checkpoints at 10, 20).
  Tests read it or copy it, never write to it."""
  from ccc_jax import train

  def build(workdir):
    summary = train.train_and_evaluate(tiny_config(tiny_data_dir), str(workdir))
    assert summary['step'] == 20

  return _built_once(tmp_path_factory, 'tiny_run', build)
