r"""Live prediction: compute per 40 ms of audio, latency, memory, and what causality costs.

    python -m benchmarks.streaming --workdir=runs/causal [--bidirectional=runs/bidir] \
        [--minutes=10] [--cores=1,2]

`--workdir` is a trained causal run (`launch/configs/synthetic.py:grid,causal,seeds=3`, say).

1. Speed (one process per core count, pinned with `taskset`): a `--minutes` synthetic recording
   (16 kHz, with 60 Hz mocap when the model uses it) pushed 40 ms at a time through
   `StreamingPredictor`; compute time per push (median, 99th percentile, max), peak resident
   memory, the state carried between calls, and the largest difference from the offline
   `Predictor` prediction of the same recording (they must agree to float32 rounding).
2. Algorithmic latency: how long after a sound its frame is final (the frame's own 40 ms, plus
   the resampler's delay at 44.1 kHz input and the mocap interval when there is mocap).
3. Dev CCC (raw ensemble) of the live definitions of a causal model trained on 4 s windows: as
   `ccc_jax.streaming` computes it (each frame the last output of the GRU over the training
   window ending there, the branches with their real past), the GRU's state carried over the
   whole recording instead, and a sliding window of the whole model (each frame the last output
   of the model on the training window ending there, zero-padded before it as in training).
   With `--bidirectional`, the bidirectional run's dev CCC beside them (overlapping windows).

Load averages are printed beside the timings (the machine is shared).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained causal run.', required=True)
_BIDIRECTIONAL = flags.DEFINE_string('bidirectional', None,
                                     'A bidirectional run of the same budget, to compare.')
_MINUTES = flags.DEFINE_float('minutes', 10.0, 'Length of the streamed recording.')
_CORES = flags.DEFINE_list('cores', ['1', '2'], 'Core counts to time the stream on.')
_SPEED_ONLY = flags.DEFINE_bool('speed_only', False, 'Internal: one speed run, JSON to stdout.')
_SKIP_DEV = flags.DEFINE_bool('skip_dev', False, 'Leave out part 3 (dev CCC).')


def _load() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def _recording(minutes: float, with_mocap: bool):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from datasets.synthetic_avd import simulation  # pylint: disable=g-import-not-at-top
  frames = int(minutes * 60 * 25)
  profile = simulation.speaker_profile(0, 39)
  latent = simulation.latents(0, 39, 0, frames)
  audio = simulation.synthesize_audio(0, 39, 0, latent, profile)[:frames * 640]
  positions = (simulation.synthesize_mocap(0, 39, 0, latent, profile, 60.0)
               if with_mocap else None)
  return np.asarray(audio, np.float32), positions


def _speed_run(workdir: str, minutes: float) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ccc_jax import streaming  # pylint: disable=g-import-not-at-top
  stream = streaming.StreamingPredictor.load(workdir, mocap_rate=60.0, use_postprocessing=False)
  audio, positions = _recording(minutes, stream.needs_mocap)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  seconds, values = [], []
  chunk, mocap_sent = 640, 0
  for begin in range(0, audio.shape[0], chunk):
    mocap = None
    if positions is not None:
      due = min(int((begin + chunk) / 16000 * 60) + 1, positions.shape[0])
      mocap, mocap_sent = positions[mocap_sent:due], max(due, mocap_sent)
    start = time.perf_counter()
    frames = stream.push(audio[begin:begin + chunk], mocap)
    seconds.append(time.perf_counter() - start)
    values.append(frames.values)
  if positions is not None and mocap_sent < positions.shape[0]:
    values.append(stream.push(None, positions[mocap_sent:]).values)
  values.append(stream.flush().values)
  streamed = np.concatenate(values)
  state_bytes = stream.state_bytes
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  offline = _offline(stream.model, audio, positions)
  ms = np.asarray(seconds) * 1000
  return {'pushes': len(ms), 'median_ms': float(np.median(ms)),
          'p99_ms': float(np.percentile(ms, 99)), 'max_ms': float(ms.max()),
          'total_s': float(ms.sum() / 1000), 'audio_s': audio.shape[0] / 16000,
          'peak_rss_mb': rss_after / 1024, 'rss_growth_mb': (rss_after - rss_before) / 1024,
          'state_bytes': state_bytes, 'frames': int(streamed.shape[0]),
          'max_abs_diff_offline': float(np.abs(streamed - offline).max()),
          'load': _load()}


def _offline(model, audio, positions):
  from ccc_jax import evaluation, inference  # pylint: disable=g-import-not-at-top
  predictor = inference.Predictor(model)
  return evaluation.ensemble(predictor.predict_seeds(audio, 16000, positions,
                                                     60.0 if positions is not None else None))


def _resampler_delay_ms() -> float:
  """Milliseconds of 16 kHz output soxr still holds back after 1 s of 44.1 kHz input."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import soxr  # pylint: disable=g-import-not-at-top
  stream = soxr.ResampleStream(44100, 16000, 1, dtype='float32', quality='HQ')
  produced = 0
  for _ in range(100):  # 1 s in 10 ms chunks
    produced += stream.resample_chunk(np.zeros(441, np.float32)).shape[0]
  return (16000 - produced) / 16.0


def _sliding_window_dev(workdir: str) -> dict:
  """Raw dev CCC when each frame is the last output of the training-length window ending there."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ccc_jax import checkpoints, evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  model = checkpoints.restore_model(workdir)
  corpus = input_pipeline.open_corpus(model.config.dataset, model.config.data_dir)
  window = model.info.window
  per_frame = {'audio': 640, 'logmel': 4}
  predictions, truths = {}, {}
  for name, (inputs, truth) in evaluation.split_recordings(
      corpus, 'dev', model.modalities, model.tasks).items():
    frames = truth.shape[0]
    runner_whole = evaluation.predict_windows  # [seeds, batch, T, tasks]
    out = np.zeros((model.num_seeds, frames, len(model.tasks)), np.float32)
    # Frames before the first full window: the window starting at 0 (causal, so the same).
    first = {k: v[None, :window * per_frame.get(k, 1)] for k, v in inputs.items()}
    out[:, :window] = np.asarray(runner_whole(model.graphdef, model.params, first))[:, 0]
    ends = np.arange(window, frames)
    for begin in range(0, len(ends), 64):
      batch_ends = ends[begin:begin + 64]
      pad = 64 - len(batch_ends)
      batch_ends_padded = np.concatenate([batch_ends, np.repeat(batch_ends[-1:], pad)])
      batch = {k: np.stack([v[(e + 1 - window) * per_frame.get(k, 1):(e + 1) * per_frame.get(k, 1)]
                            for e in batch_ends_padded]) for k, v in inputs.items()}
      predicted = np.asarray(runner_whole(model.graphdef, model.params, batch))
      out[:, batch_ends] = predicted[:, :len(batch_ends), -1]
    predictions[name], truths[name] = out, truth
  table = evaluation.score_split({n: {'prediction': predictions[n], 'truth': truths[n]}
                                  for n in predictions}, model.tasks)
  return {task: table[task]['ccc_concat'] for task in (*model.tasks, 'mean')}


def _carried_dev(workdir: str) -> dict:
  """Raw dev CCC when the GRU's state is carried over each whole recording: the model applied
  to the recording as one window (the first definition tried)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ccc_jax import checkpoints, evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  model = checkpoints.restore_model(workdir)
  corpus = input_pipeline.open_corpus(model.config.dataset, model.config.data_dir)
  predictions = {}
  for name, (inputs, truth) in evaluation.split_recordings(
      corpus, 'dev', model.modalities, model.tasks).items():
    whole = {k: v[None] for k, v in inputs.items()}
    predictions[name] = {'truth': truth, 'prediction': np.asarray(evaluation.predict_windows(
        model.graphdef, model.params, whole))[:, 0]}
  table = evaluation.score_split(predictions, model.tasks)
  return {task: table[task]['ccc_concat'] for task in (*model.tasks, 'mean')}


def _streamed_dev(workdir: str) -> dict:
  from ccc_jax import checkpoints, evaluation, input_pipeline  # pylint: disable=g-import-not-at-top
  model = checkpoints.restore_model(workdir)
  corpus = input_pipeline.open_corpus(model.config.dataset, model.config.data_dir)
  predictions = evaluation.predict_split(model.graphdef, model.params, corpus, 'dev',
                                         model.config.model, model.tasks)
  table = evaluation.score_split(predictions, model.tasks)
  return {task: table[task]['ccc_concat'] for task in (*model.tasks, 'mean')}


def main(argv):
  del argv
  from ccc_jax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed_memory()  # as the launch scripts do, before JAX starts
  if _SPEED_ONLY.value:
    print(json.dumps(_speed_run(_WORKDIR.value, _MINUTES.value)))
    return
  print(f'# Streaming benchmark, {_MINUTES.value:g} min recording, 40 ms pushes')
  print(f'load average before: {_load()}')
  for cores in _CORES.value:
    cpus = ','.join(str(c) for c in range(int(cores)))
    command = ['taskset', '-c', cpus, sys.executable, '-m', 'benchmarks.streaming',
               f'--workdir={_WORKDIR.value}', f'--minutes={_MINUTES.value}', '--speed_only']
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f'{cores} core(s): per 40 ms push median {result["median_ms"]:.3f} ms, '
          f'p99 {result["p99_ms"]:.3f} ms, max {result["max_ms"]:.2f} ms; '
          f'{result["total_s"]:.1f} s for {result["audio_s"]:.0f} s of audio '
          f'({result["audio_s"] / result["total_s"]:.0f}x real time); peak RSS '
          f'{result["peak_rss_mb"]:.0f} MB (grew {result["rss_growth_mb"]:.1f} MB while '
          f'streaming); state {result["state_bytes"]} bytes; {result["frames"]} frames, max '
          f'|stream - offline| {result["max_abs_diff_offline"]:.2e}; load {result["load"]}')
  print(f'algorithmic latency: a frame is final at its end (40 ms after its first sample); '
        f'the soxr resampler holds back {_resampler_delay_ms():.2f} ms more at 44.1 kHz input; '
        f'with 60 Hz mocap up to one mocap interval (16.7 ms) more')
  if _SKIP_DEV.value:
    return
  from ccc_jax import report  # pylint: disable=g-import-not-at-top
  rows = [('causal, as streamed (`ccc_jax.streaming`)', _streamed_dev(_WORKDIR.value)),
          ('causal, GRU state carried over the whole recording', _carried_dev(_WORKDIR.value)),
          ('causal, sliding 4 s window of the whole model', _sliding_window_dev(_WORKDIR.value))]
  if _BIDIRECTIONAL.value:
    rows.append(('bidirectional (overlapping windows)', _streamed_dev(_BIDIRECTIONAL.value)))
  tasks = list(rows[0][1])
  print(report.markdown_table(['dev CCC, raw ensemble'] + tasks,
                              [[name] + [f'{row[t]:.4f}' for t in tasks] for name, row in rows]))
  print(f'load average after: {_load()}')


if __name__ == '__main__':
  app.run(main)
