"""Predicting new recordings with a trained checkpoint.

Owns the `Predictor` (a checkpoint applied to a recording given as arrays or files) and
`predict_recording` (one recording from files to a traces CSV and a plot, what
`python -m launch.predict` does). A recording goes one way: waveform (`audio_io`) -> windows cut
as the dataset builders cut them (`windows`) -> their features computed per batch (`features`,
`egemaps`: the functions the dataset builders call) -> normalised (`input_pipeline.normalise`)
-> predicted (`evaluation.predict_windows`) -> averaged back together (`windows.OverlapAverage`)
-> the seeds' ensemble -> post-processing.

Seeds: a run that trained several seeds at once is used as an ensemble, the mean of the seeds'
traces (`evaluation.ensemble`); post-processing is tuned on, and applied to, that mean.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ccc_jax import audio_io
from ccc_jax import checkpoints
from ccc_jax import egemaps
from ccc_jax import evaluation
from ccc_jax import features
from ccc_jax import formats
from ccc_jax import input_pipeline
from ccc_jax import metrics
from ccc_jax import plots
from ccc_jax import postprocess
from ccc_jax import streaming
from ccc_jax import windows
from ccc_jax.errors import CheckpointError, DataError


class Predictor:
  """A trained checkpoint applied to new recordings.

  Usage (in a notebook):

      predictor = Predictor.load('runs/creativeit')           # the best checkpoint
      traces = predictor.predict(audio, 44100, mocap=positions, mocap_rate=60.0)
      traces.shape  # [frames at 25 Hz, len(predictor.tasks)]

  The prediction of a run with several seeds is their ensemble (the mean of the seeds'
  traces). The post-processing tuned on dev for this checkpoint (`launch.evaluate --split=dev`)
  is applied when it exists and `use_postprocessing` is true; `postprocessing` says which is used.

  Memory: besides the 16 kHz waveform (230 MB per hour) and the traces (a few MB per hour),
  only one batch of windows and the log-mel or eGeMAPS of its span exist at a time. Mocap
  features are computed for the whole recording at once (`features.mocap_features`); they are
  smaller than the marker positions.
  """

  def __init__(self, model: checkpoints.RestoredModel,
               postprocessing: postprocess.PostProcessing | None = None,
               batch_size: int | None = None):
    if 'egemaps_functionals' in model.modalities:
      # They were computed by the AVEC 2016 organisers for the package's recordings only.
      raise CheckpointError(
          'this model uses egemaps_functionals, the AVEC 2016 package\'s precomputed functionals, '
          'which exist only for the package\'s recordings: a new recording cannot be predicted '
          'with it (score the package\'s splits with launch.evaluate, or train on egemaps, '
          'computed from any audio)')
    if postprocessing is not None and postprocessing.tasks != model.tasks:
      raise ValueError(f'post-processing is for tasks {postprocessing.tasks}, the model predicts '
                       f'{model.tasks}')
    self.model = model
    self.postprocessing = postprocessing
    self.batch_size = int(batch_size or model.config.eval_batch)

  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = 'best', *, use_postprocessing: bool = True,
           batch_size: int | None = None) -> 'Predictor':
    """Restores `checkpoint` ('best', 'latest' or a step) of `workdir` on one device.

    Args:
      workdir: a training run's workdir.
      checkpoint: which checkpoint.
      use_postprocessing: apply the post-processing saved for this checkpoint, if there is one.
      batch_size: windows per model call; defaults to the run's `eval_batch`.
    """
    model = checkpoints.restore_model(workdir, checkpoint)
    postprocessing = postprocess.load(workdir, model.step) if use_postprocessing else None
    return cls(model, postprocessing, batch_size)

  @property
  def tasks(self) -> tuple[str, ...]:
    """Column names of the predictions."""
    return self.model.tasks

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.model.modalities

  @property
  def needs_mocap(self) -> bool:
    return 'mocap' in self.model.modalities

  @property
  def label_rate(self) -> int:
    """Prediction frames per second (25: one per 40 ms)."""
    return self.model.info.label_rate

  @property
  def step(self) -> int:
    return self.model.step

  def predict(self, audio, sample_rate: int, mocap=None,
              mocap_rate: float | None = None) -> np.ndarray:
    """Traces `[frames, tasks]` (float32, 25 Hz) of one recording: the seeds' ensemble,
    post-processed when this predictor has post-processing.

    Args:
      audio: waveform `[samples]` or `[samples, channels]` at `sample_rate` (any rate).
      sample_rate: its samples per second.
      mocap: for a model that uses mocap, marker positions `[mocap frames, markers, 3]`, frame k
        at time k / `mocap_rate` from the audio's start, NaN where a marker was not seen (as
        `formats.read_mocap_csv` returns them). Ignored by models without mocap.
      mocap_rate: mocap frames per second.

    Frame i covers [40 i, 40 i + 40) ms of the audio; a partial last frame counts.
    """
    return self._postprocessed(evaluation.ensemble(self.predict_seeds(audio, sample_rate, mocap,
                                                           mocap_rate)))

  def _postprocessed(self, prediction: np.ndarray) -> np.ndarray:
    if self.postprocessing is None:
      return prediction
    return self.postprocessing.apply(prediction).astype(np.float32)

  def predict_file(self, audio_path: str, mocap_path: str | None = None) -> np.ndarray:
    """`predict` on an audio file (any format, rate and channel count soundfile reads) and,
    for a model that uses mocap, a mocap CSV file (`formats.read_mocap_csv`'s format).

    Raises:
      DataError: a missing, unreadable or empty file, or mocap the model cannot use; the
        message names the file.
    """
    if self.needs_mocap and mocap_path is None:
      raise ValueError(self._mocap_required())
    audio_io.audio_info(audio_path)  # a bad audio file fails before the mocap is read
    take = formats.read_mocap_csv(mocap_path) if self.needs_mocap else None
    waveform = audio_io.load_audio(audio_path)
    prediction = evaluation.ensemble(self._predict_waveform(
        waveform, None if take is None else take.positions, None if take is None else take.rate,
        mocap_source=mocap_path or 'mocap'))
    return self._postprocessed(prediction)

  def predict_seeds(self, audio, sample_rate: int, mocap=None,
                    mocap_rate: float | None = None) -> np.ndarray:
    """Raw per-seed traces `[seeds, frames, tasks]` (no ensemble, no post-processing).

    Windows are the ones the dataset builders cut (`windows.window_starts` with the model's
    window and hop), predicted `batch_size` at a time and averaged where they overlap
    (`windows.OverlapAverage`), as `evaluation.predict_split` does for a prepared split.
    """
    return self._predict_waveform(audio_io.waveform_16k(audio, sample_rate), mocap, mocap_rate)

  def _predict_waveform(self, waveform: np.ndarray, mocap, mocap_rate,
                        mocap_source: str = 'mocap') -> np.ndarray:
    """`predict_seeds` of a 16 kHz mono waveform; `mocap_source` names the mocap in errors."""
    info = self.model.info
    num_frames = features.num_label_frames(waveform.shape[0])
    mocap_features = None
    if self.needs_mocap:
      mocap_features = self._mocap_features(mocap, mocap_rate, num_frames, mocap_source)
    if self.model.config.model.causal:
      return self._predict_causal(waveform, mocap_features, num_frames)
    starts = windows.window_starts(num_frames, info.window, info.hop)
    stats = self._input_stats(waveform, num_frames)
    delay = self.model.config.model.label_delay
    average = windows.OverlapAverage(num_frames, (self.model.num_seeds, len(self.tasks)))
    for begin in range(0, len(starts), self.batch_size):
      batch_starts = starts[begin:begin + self.batch_size]
      inputs = self._window_batch(waveform, mocap_features, batch_starts, num_frames, stats)
      predicted = np.asarray(evaluation.predict_windows(
          self.model.graphdef, self.model.params, inputs))  # [seeds, batch, T, tasks]
      for index, start in enumerate(batch_starts):
        average.add(start, np.moveaxis(predicted[:, index], 0, 1), delay)
    return np.moveaxis(average.result(), 1, 0)

  def _input_stats(self, waveform: np.ndarray, num_frames: int) -> dict:
    """The statistics this recording's inputs are normalised with (`input_pipeline.input_stats`):
    for `model.recording_norm`, its own, from the arrays the builders compute them from."""
    norm = self.model.config.model.recording_norm_inputs
    if not norm:
      return self.model.info.stats
    fitted = np.zeros((num_frames * features.SAMPLES_PER_FRAME,), np.float32)
    fitted[:min(waveform.shape[0], fitted.shape[0])] = waveform[:fitted.shape[0]]
    # log-mel block by block, in the bounded memory of the prediction itself (one batch's span).
    block = (self.batch_size - 1) * self.model.info.hop + self.model.info.window
    inputs = {'audio': fitted,
              'logmel': (features.log_mel_span(fitted, begin, min(begin + block, num_frames))
                         for begin in range(0, num_frames, block))}
    own = features.recording_stats({name: inputs[name] for name in norm})
    return input_pipeline.input_stats(self.model.info.stats, own, norm)

  def _predict_causal(self, waveform, mocap_features, num_frames: int) -> np.ndarray:
    """A causal run's definition (`ccc_jax.streaming`), which a stream of the same recording
    gives in any chunking."""
    padded = np.zeros((num_frames * features.SAMPLES_PER_FRAME,), np.float32)
    padded[:waveform.shape[0]] = waveform
    inputs = {'audio': audio_io.as_stored(padded)}
    if 'logmel' in self.modalities:
      inputs['logmel'] = features.log_mel(waveform, num_frames)
    if mocap_features is not None:
      inputs['mocap'] = mocap_features
    runner = streaming.CausalRunner(self.model.graphdef, self.model.params, self.modalities,
                                    self.model.info.window)
    return runner.run_whole(input_pipeline.normalise(inputs, self.model.info.stats,
                                                     self.modalities))

  def _mocap_required(self) -> str:
    return (f'this model uses mocap (it was trained on {", ".join(self.modalities)}): pass the '
            'marker positions and their rate (mocap=, mocap_rate=; --mocap=FILE.csv on the '
            'command line)')

  def _mocap_features(self, mocap, mocap_rate, num_frames: int, source: str) -> np.ndarray:
    """Normalisable mocap features `[num_frames, D]` of the whole recording (`D` is small)."""
    if mocap is None or mocap_rate is None:
      raise ValueError(self._mocap_required())
    positions = np.asarray(mocap, dtype=np.float32)
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[0] == 0:
      raise DataError(f'{source}: marker positions must be [frames, markers, 3], got shape '
                      f'{positions.shape}')
    expected = self.model.info.input_dims['mocap']
    got = features.mocap_feature_dim(positions.shape[1])
    if got != expected:
      raise DataError(f'{source}: {positions.shape[1]} markers give {got} features per frame; '
                      f'the model was trained on {expected} (mocap with the same markers, in the '
                      'same order, as its dataset)')
    mocap_seconds = positions.shape[0] / float(mocap_rate)
    audio_seconds = num_frames / self.label_rate
    if abs(mocap_seconds - audio_seconds) > features.LENGTH_TOLERANCE_S:
      raise DataError(f'{source}: the mocap lasts {mocap_seconds:.2f} s but the audio '
                      f'{audio_seconds:.2f} s; they must agree within '
                      f'{features.LENGTH_TOLERANCE_S} s (both start at time 0)')
    try:
      return features.mocap_features(positions, float(mocap_rate), num_frames=num_frames)
    except DataError as error:
      raise DataError(f'{source}: {error}') from None

  def _window_batch(self, waveform, mocap_features, starts, num_frames: int, stats):
    """Model inputs for the windows at `starts`, normalised with `stats`, padded to
    `batch_size` windows."""
    window = self.model.info.window
    batch = {}
    if 'audio' in self.modalities:
      batch['audio'] = audio_io.as_stored(np.stack([
          windows.slice_window(waveform, s, window, features.SAMPLES_PER_FRAME) for s in starts]))
    if 'logmel' in self.modalities:
      # One log-mel computation for the batch's span; past the recording's last frame a window's
      # log-mel rows are zero padding, as in the prepared datasets.
      first, end = int(starts[0]), min(int(starts[-1]) + window, num_frames)
      span = features.log_mel_span(waveform, first, end)
      batch['logmel'] = np.stack([windows.slice_window(span, s - first, window,
                                                       features.LOGMEL_PER_FRAME)
                                  for s in starts])
    if 'egemaps' in self.modalities:
      # As log-mel; `egemaps_span` reads the margins (and the start of a voiced stretch) that
      # make the rows those of the whole recording (its docstring says within what).
      first, end = int(starts[0]), min(int(starts[-1]) + window, num_frames)
      span = egemaps.egemaps_span(waveform, first, end)
      batch['egemaps'] = np.stack([windows.slice_window(span, s - first, window,
                                                        egemaps.EGEMAPS_PER_FRAME)
                                   for s in starts])
    if 'mocap' in self.modalities:
      batch['mocap'] = np.stack([windows.slice_window(mocap_features, s, window) for s in starts])
    missing = self.batch_size - len(starts)
    if missing:  # one compiled program: the last batch repeats its last window
      batch = {k: np.concatenate([v, np.repeat(v[-1:], missing, axis=0)]) for k, v in batch.items()}
    return input_pipeline.normalise(batch, stats, self.modalities)


def predict_recording(workdir: str, audio: str, output: str, *, mocap: str | None = None,
                      plot: str | None = None, labels: str | None = None,
                      checkpoint: str | int = 'best',
                      use_postprocessing: bool = True) -> dict[str, Any]:
  """Predicts one recording from files: writes the traces CSV (and a plot); returns a summary.

  Args:
    workdir: the training run's workdir.
    audio: audio file (any format, rate and channel count soundfile reads).
    output: CSV to write, `time,<task>,...` (`formats.write_traces_csv`).
    mocap: mocap CSV (`formats.read_mocap_csv`), required by a model trained with mocap and
      ignored by one without.
    plot: PNG to draw the traces in.
    labels: a gold-standard CSV in the output's format (any rate; columns for tasks the model
      does not predict are ignored): drawn in the plot, and each task's CCC over the frames the
      labels span (gold interpolated to the frame starts) goes into the summary.
    checkpoint: 'best', 'latest' or a step.
    use_postprocessing: apply the post-processing tuned on dev for the checkpoint, if any.

  Returns:
    `output`, `frames`, `seconds`, `tasks`, `step`, `seeds`, `postprocessing` (a description or
    None), `postprocess_requested`, `mocap_ignored`, `warnings` (sentences about the result a
    user should know, e.g. a recording shorter than the tuned delay), and `ccc` (task -> CCC)
    with labels, `plot` with a plot.
  """
  label_columns = None
  if labels is not None:  # a bad labels file fails before any prediction work
    label_times, label_columns = formats.read_traces_csv(labels)
  predictor = Predictor.load(workdir, checkpoint, use_postprocessing=use_postprocessing)
  tasks = predictor.tasks
  gold = None
  if label_columns is not None:
    gold = {task: (label_times, values) for task, values in label_columns.items()
            if task in tasks}
    if not gold:
      raise DataError(f'{labels}: columns {sorted(label_columns)} name none of the tasks the '
                      f'model predicts, {list(tasks)}')
  prediction = predictor.predict_file(audio, mocap)
  formats.write_traces_csv(output, prediction, tasks, predictor.label_rate)
  summary: dict[str, Any] = {
      'output': os.fspath(output), 'frames': prediction.shape[0], 'tasks': list(tasks),
      'seconds': prediction.shape[0] / predictor.label_rate, 'step': predictor.step,
      'seeds': predictor.model.num_seeds,
      'postprocessing': (None if predictor.postprocessing is None else
                         postprocess.describe(predictor.postprocessing)),
      'postprocess_requested': use_postprocessing,
      'mocap_ignored': mocap is not None and not predictor.needs_mocap,
      'warnings': _short_recording_warnings(predictor, prediction.shape[0])}
  if gold is not None:
    summary['ccc'] = {}
    for k, task in enumerate(tasks):
      if task in gold:
        on_frames = formats.labels_on_frames(*gold[task], prediction.shape[0], predictor.label_rate)
        known = np.isfinite(on_frames)
        summary['ccc'][task] = (metrics.concordance_cc(on_frames[known], prediction[known, k])
                                if known.sum() >= 2 else math.nan)
  if plot is not None:
    kind = 'raw' if predictor.postprocessing is None else 'post-processed'
    plots.plot_traces(plot, prediction, tasks, predictor.label_rate,
                f'{os.path.basename(audio)}: checkpoint step {predictor.step}, {kind}', gold)
    summary['plot'] = os.fspath(plot)
  return summary


def _short_recording_warnings(predictor: Predictor, num_frames: int) -> list[str]:
  """A delay at least as long as the recording leaves a constant post-processed trace."""
  if predictor.postprocessing is None:
    return []
  rate = predictor.label_rate
  return [f'{task}: the recording lasts {num_frames / rate:.2f} s, not longer than the '
          f'{steps.delay_frames / rate:.2f} s delay tuned on dev, so its post-processed trace is '
          'constant (the first prediction repeated); --postprocess=false gives the raw trace'
          for task, steps in predictor.postprocessing.per_task.items()
          if steps.delay_frames >= num_frames]
