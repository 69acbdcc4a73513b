r"""Seconds to predict one hour of audio (and mocap) with `ccc_jax.inference.Predictor`.

Builds the default model of launch/configs/synthetic.py (randomly initialised: speed does not
depend on the weights) for the default synthetic corpus' inputs (100-frame windows, hop 50,
17 mocap markers), generates `--hours` of synthetic 16 kHz audio and 60 Hz marker positions,
and times `Predictor.predict` after a short warm-up that compiles the model. Prints, per
variant, the wall time, the process's CPU time (on a machine shared with other jobs the wall
time varies; CPU time much less) and its peak resident memory (`ru_maxrss`); then, from a
second run timed call by call, the split between log-mel features, the model and the rest
(slicing, normalising, averaging, mocap features).

  python -m benchmarks.inference_speed                      # audio_only and full, one hour
  python -m benchmarks.inference_speed --variants=audio_only --hours=0.25
"""

from __future__ import annotations

import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import features
from ccc_jax import host_memory
from ccc_jax import inference
from ccc_jax import train
from ccc_jax.config import ModelInfo
from launch import cli
from launch.configs import synthetic

_VARIANTS = flags.DEFINE_list('variants', ['audio_only', 'full'],
                              'audio_only (raw audio + log-mel) and/or full (+ mocap).')
_HOURS = flags.DEFINE_float('hours', 1.0, 'Length of the synthetic recording.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Windows per model call (default: the '
                                   "config's eval_batch).")

NUM_MARKERS = 17  # datasets/synthetic_avd/simulation.py MARKERS
MOCAP_RATE = 60.0
WINDOW, HOP = 100, 50  # datasets/common.py defaults


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _predictor(variant: str, batch_size: int | None) -> inference.Predictor:
  config = cli.run_config(synthetic.get_config('audio_only' if variant == 'audio_only' else None))
  input_dims = {'audio': features.SAMPLES_PER_FRAME, 'logmel': features.NUM_MELS,
                'mocap': features.mocap_feature_dim(NUM_MARKERS)}
  stats = {name: {'mean': [0.0] * dim, 'std': [1.0] * dim}
           for name, dim in input_dims.items() if name != 'audio'}
  stats['audio'] = {'mean': 0.0, 'std': 0.1}
  info = ModelInfo(tasks=tuple(config.tasks), input_dims=input_dims, stats=stats,
                         window=WINDOW, hop=HOP, sample_rate=features.SAMPLE_RATE,
                         label_rate=features.LABEL_RATE, dataset=config.dataset)
  graphdef, params = train.init_params(config.model, info, config.seeds)
  model = checkpoints.RestoredModel(workdir='', step=0, graphdef=graphdef, params=params,
                                    info=info, config=config)
  return inference.Predictor(model, batch_size=batch_size)


def _recording(seconds: float) -> tuple[np.ndarray, np.ndarray]:
  """Noise with a slowly varying level (speech-like loudness changes) and wandering markers.

  Generated a minute at a time, so that the peak memory reported is the predictor's, not the
  generator's temporaries.
  """
  rng = np.random.default_rng(0)
  audio = np.empty(int(seconds * features.SAMPLE_RATE), np.float32)
  minute = 60 * features.SAMPLE_RATE
  for begin in range(0, audio.shape[0], minute):
    piece = audio[begin:begin + minute]
    level = 1.2 + np.sin(np.arange(begin, begin + piece.shape[0]) / 8000.0)
    piece[:] = 0.05 * level * rng.standard_normal(piece.shape[0])
  steps = rng.standard_normal((int(seconds * MOCAP_RATE), NUM_MARKERS, 3), dtype=np.float32)
  positions = np.cumsum(steps, axis=0, out=steps)
  positions += 500
  return audio, positions


class _Timed:
  """Wraps a function and sums the seconds spent in it (blocking on JAX results)."""

  def __init__(self, function):
    self.function, self.seconds = function, 0.0

  def __call__(self, *args, **kwargs):
    tic = time.perf_counter()
    result = jax.block_until_ready(self.function(*args, **kwargs))
    self.seconds += time.perf_counter() - tic
    return result


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the launch scripts do, before JAX starts
  seconds = _HOURS.value * 3600
  audio, positions = _recording(seconds)
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind}; {seconds / 3600:.2f} h of '
        f'audio ({audio.nbytes / 2**20:.0f} MiB at 16 kHz) and {NUM_MARKERS}-marker mocap at '
        f'{MOCAP_RATE:.0f} Hz; peak RSS before predicting {_peak_rss_mb():.0f} MiB')
  log_mel, predict_windows = features.log_mel, evaluation.predict_windows
  for variant in _VARIANTS.value:
    predictor = _predictor(variant, _BATCH_SIZE.value)
    mocap = positions if predictor.needs_mocap else None
    tic = time.perf_counter()
    predictor.predict(audio[:16000 * 10], 16000, None if mocap is None else mocap[:600],
                      MOCAP_RATE)  # compiles
    compile_seconds = time.perf_counter() - tic
    tic, cpu_tic = time.perf_counter(), time.process_time()
    prediction = predictor.predict(audio, 16000, mocap, MOCAP_RATE)
    total, cpu = time.perf_counter() - tic, time.process_time() - cpu_tic
    peak = _peak_rss_mb()
    # Where the time goes: a second run with the feature and model calls timed one by one.
    features.log_mel = timed_log_mel = _Timed(log_mel)
    evaluation.predict_windows = timed_model = _Timed(predict_windows)
    try:
      tic = time.perf_counter()
      predictor.predict(audio, 16000, mocap, MOCAP_RATE)
      serial = time.perf_counter() - tic
    finally:
      features.log_mel, evaluation.predict_windows = log_mel, predict_windows
    rest = serial - timed_log_mel.seconds - timed_model.seconds
    print(f'{variant} (modalities {",".join(predictor.modalities)}, batch '
          f'{predictor.batch_size}): {total:.2f} s for {prediction.shape[0]} frames '
          f'({seconds / total:.0f}x real time), {cpu:.2f} s of CPU time, peak RSS so far '
          f'{peak:.0f} MiB (warm-up with compile {compile_seconds:.1f} s)\n'
          f'  timed call by call: {serial:.2f} s = log-mel {timed_log_mel.seconds:.2f} s + model '
          f'{timed_model.seconds:.2f} s + rest {rest:.2f} s (slicing, normalising, averaging, '
          'mocap features)')


if __name__ == '__main__':
  app.run(main)
