r"""Seconds to tune post-processing on a RECOLA-sized dev split (9 recordings of 5 minutes).

    python -m benchmarks.postprocess_speed

Prints the time of `postprocess.tune` (the full delay x smoothing x scale x bias search, 2
tasks) with the load average and CPU beside it. Was a wall-clock assertion in the tests; a
timing belongs here, where a noisy machine cannot fail a test run.
"""

import os
import time

import numpy as np

from ccc_jax import postprocess

TASKS = ('arousal', 'valence')


def _recording(rng, frames=7500, lead=75, noise=0.1):
  truth = np.cumsum(rng.normal(size=(frames, len(TASKS))), axis=0) / 30
  prediction = np.concatenate([truth[lead:], np.repeat(truth[-1:], lead, axis=0)])
  return truth, prediction + noise * rng.normal(size=truth.shape)


def main():
  rng = np.random.default_rng(6)
  dev = [_recording(rng) for _ in range(9)]
  times = []
  for _ in range(3):
    start = time.perf_counter()
    postprocess.tune(dev, TASKS)
    times.append(time.perf_counter() - start)
  with open('/proc/cpuinfo') as f:
    family = next((line.split(':')[1].strip() for line in f if line.startswith('cpu family')), '?')
  print(f'postprocess.tune, 9 x 5 min dev recordings, 2 tasks: median {np.median(times):.2f} s '
        f'(runs {", ".join(f"{t:.2f}" for t in times)}); load average '
        f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}; cpu family {family}')


if __name__ == '__main__':
  main()
