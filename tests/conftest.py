"""Test session set-up: 8 fake CPU devices (before jax is imported) and float64 opt-in helpers.

Every test runs in one process with `--xla_force_host_platform_device_count=8`, so multi-device
tests and one-device tests share compiled programs and a single JAX start-up.
"""

import os

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
