"""Forward+backward time per batch of `AVDNet`, for each temporal model, on the local devices.

Times one jitted value-and-gradient step (mean-squared output as the loss; the real loss adds
negligible cost) after compilation, with the default model config and the data-contract input
shapes: audio [B, T*640], logmel [B, T*4, 40], mocap [B, T, 90]. Prints the minimum and median
over `--repeats` runs; the minimum is the figure least disturbed by other processes.

  python -m benchmarks.model_speed
  python -m benchmarks.model_speed --batch_sizes=8,32 --window=100 --repeats=20
"""

from __future__ import annotations

import statistics
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp

from ccc_jax import models
from ccc_jax.config import ModelConfig

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '32'], 'Batch sizes to time.')
_WINDOW = flags.DEFINE_integer('window', 100, 'Window length T in label frames (25 Hz).')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed runs per setting, after compilation.')
_TEMPORAL = flags.DEFINE_list('temporal', list(models.TEMPORAL_MODELS), 'Temporal models to time.')

INPUT_DIMS = {'audio': 640, 'logmel': 40, 'mocap': 90}
NUM_TASKS = 3


def _example_inputs(batch_size: int, window: int) -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(0), 3)
  return {
      'audio': jax.random.normal(keys[0], (batch_size, window * INPUT_DIMS['audio'])),
      'logmel': jax.random.normal(keys[1], (batch_size, window * 4, INPUT_DIMS['logmel'])),
      'mocap': jax.random.normal(keys[2], (batch_size, window, INPUT_DIMS['mocap'])),
  }


def time_forward_backward(temporal: str, batch_size: int, window: int,
                          repeats: int) -> tuple[int, list[float]]:
  """Parameter count and the seconds of each timed forward+backward pass."""
  config = ModelConfig(temporal=temporal)
  model = models.AVDNet(config, num_tasks=NUM_TASKS, input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))

  @jax.jit
  def value_and_grad(params, inputs):
    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params)(inputs) ** 2)
    return jax.value_and_grad(loss)(params)

  inputs = _example_inputs(batch_size, window)
  jax.block_until_ready(value_and_grad(params, inputs))  # compile
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(value_and_grad(params, inputs))
    seconds.append(time.perf_counter() - start)
  return num_params, seconds


def main(argv):
  del argv
  print(f'jax {jax.__version__}, devices: {jax.devices()}')
  print(f'default AVDNet, {NUM_TASKS} tasks, input_dims {INPUT_DIMS}, T={_WINDOW.value}, '
        'jitted forward+backward, after compile')
  for temporal in _TEMPORAL.value:
    for batch_size in (int(b) for b in _BATCH_SIZES.value):
      num_params, seconds = time_forward_backward(
          temporal, batch_size, _WINDOW.value, _REPEATS.value)
      print(f'temporal={temporal:3s} params={num_params:7d} batch={batch_size:3d}: '
            f'min {min(seconds) * 1e3:7.1f} ms, median {statistics.median(seconds) * 1e3:7.1f} ms '
            f'({_REPEATS.value} runs)')


if __name__ == '__main__':
  app.run(main)
