"""Using a trained checkpoint: restoring it, evaluating a split, predicting new recordings.

Owns everything downstream of training:

- `restore_model`: a checkpoint's parameters (stacked over seeds) and `ModelInfo`, on one device,
  whatever number of devices trained it. No optimiser state is read.
- The post-processing file `<workdir>/postprocess.json`: per checkpoint step, the post-processing
  tuned on dev (`save_postprocessing`, `load_postprocessing`).
- `evaluate_split`: whole-recording scores of a prepared split before and after post-processing.
  The dev split tunes the post-processing and saves it; every other split applies the saved one
  unchanged. An unlabelled split (RECOLA test) gets its predictions written as CSV instead.
- `Predictor`: a checkpoint applied to a new recording given as numpy arrays (or files). Windows
  are cut, predicted and averaged back together batch by batch, and log-mel features are
  computed per batch from the waveform with enough margin to equal the whole-recording features
  the dataset builders store, so memory beyond the waveform itself stays bounded.
- `write_traces_csv` / `read_traces_csv`: the `time,<task>,...` CSV of predictions and gold
  standards (one row per 40 ms label frame, `time` = the frame's start in seconds).
- `predict_recording`: one recording from files to a traces CSV and a plot (`launch.predict`).

Seeds: a run that trained several seeds at once is used as an ensemble. Its prediction is the
mean of the seeds' reassembled traces (`ensemble`); post-processing is tuned on, and applied to,
that mean. `evaluate_split` also reports the mean over seeds of each seed's own scores.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from ccc_jax import audio_io
from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import features
from ccc_jax import input_pipeline
from ccc_jax import postprocess
from ccc_jax import report
from ccc_jax import train
from ccc_jax import windows
from ccc_jax.audio_io import DataError

POSTPROCESS_FILE = 'postprocess.json'
# Mocap and audio of one recording may differ this much in length, as the dataset builders allow
# (datasets/common.py LENGTH_TOLERANCE_S); more means they are not the same recording.
MOCAP_LENGTH_TOLERANCE_S = 1.0
# Post-processing is tuned on this split and applied unchanged to every other one.
TUNING_SPLIT = 'dev'


# ---------------------------------------------------------------------------------------------
# Restoring a checkpoint.


@dataclasses.dataclass(frozen=True)
class RestoredModel:
  """A checkpoint ready for inference.

  Attributes:
    workdir: the run's workdir.
    step: the checkpoint's training step (post-processing is saved per step).
    graphdef: the model's graph definition.
    params: parameters stacked over seeds (leading axis), on this process's first device.
    info: what inference needs besides the parameters (tasks, input sizes, statistics, window).
    config: the run's config as saved with the checkpoint (a JSON dict).
  """
  workdir: str
  step: int
  graphdef: Any
  params: Any
  info: train.ModelInfo
  config: dict[str, Any]

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.info.tasks

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.config['model']['modalities'])

  @property
  def num_seeds(self) -> int:
    return len(self.config['seeds'])


def restore_model(workdir: str, checkpoint: str | int = 'best') -> RestoredModel:
  """Restores the parameters of `checkpoint` ('best', 'latest' or a step) of `workdir`.

  Raises:
    FileNotFoundError: the workdir has no such checkpoint.
    ValueError: `checkpoint` is not 'best', 'latest' or a number.
  """
  graphdefs = []

  def abstract_params(run_info):
    info = train.ModelInfo.from_json(run_info['model_info'])
    graphdef, params = train.abstract_model(
        ml_collections.ConfigDict(run_info['config']['model']), info)
    graphdefs.append(graphdef)
    num_seeds = len(run_info['config']['seeds'])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_seeds,) + x.shape, x.dtype), params)

  params, run_info = checkpoints.restore_params(workdir, str(checkpoint), abstract_params)
  return RestoredModel(workdir=os.path.abspath(workdir), step=int(run_info['step']),
                       graphdef=graphdefs[0], params=params,
                       info=train.ModelInfo.from_json(run_info['model_info']),
                       config=run_info['config'])


def ensemble(prediction_seeds: np.ndarray) -> np.ndarray:
  """The ensemble `[frames, tasks]` of per-seed traces `[seeds, frames, tasks]`: their mean."""
  return np.mean(prediction_seeds, axis=0, dtype=np.float64).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The post-processing file.


def postprocess_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), POSTPROCESS_FILE)


def _read_postprocess_file(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path}: not valid JSON ({error}); delete it and run '
                     'python -m launch.evaluate --split=dev again') from None
  if not isinstance(data, dict) or not isinstance(data.get('steps'), dict):
    raise ValueError(f'{path}: expected {{"steps": {{STEP: ...}}}}; delete it and run '
                     'python -m launch.evaluate --split=dev again')
  return data


def save_postprocessing(workdir: str, step: int, postprocessing: postprocess.PostProcessing,
                        details: dict[str, Any]) -> str:
  """Records `postprocessing` as the one tuned for checkpoint `step`; returns the file's path.

  Entries of other steps in the file are kept. The file is replaced atomically.
  """
  path = postprocess_path(workdir)
  data = _read_postprocess_file(path) if os.path.exists(path) else {'steps': {}}
  data['steps'][str(int(step))] = {'step': int(step), **details,
                                   'postprocessing': postprocessing.to_json()}
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w') as f:
    json.dump(data, f, indent=2)
  os.replace(temporary, path)
  return path


def load_postprocessing(workdir: str, step: int) -> postprocess.PostProcessing | None:
  """The post-processing tuned on dev for checkpoint `step`, or None if none was tuned."""
  path = postprocess_path(workdir)
  if not os.path.exists(path):
    return None
  entry = _read_postprocess_file(path)['steps'].get(str(int(step)))
  if entry is None:
    return None
  try:
    return postprocess.PostProcessing.from_json(entry['postprocessing'])
  except (KeyError, TypeError, ValueError) as error:
    raise ValueError(f'{path}: the entry for step {step} is invalid ({error})') from None


def _missing_postprocessing(workdir: str, step: int, checkpoint) -> FileNotFoundError:
  return FileNotFoundError(
      f'{postprocess_path(workdir)} holds no post-processing tuned for checkpoint step {step}: '
      f'tune it on dev first with python -m launch.evaluate --workdir={workdir} --split=dev '
      f'--checkpoint={checkpoint}')


def describe_postprocessing(postprocessing: postprocess.PostProcessing,
                            label_rate: int = features.LABEL_RATE) -> str:
  """One line per task saying which steps are kept, e.g. `delay 1.60 s (40 frames)`."""
  lines = []
  for task, steps in postprocessing.per_task.items():
    kept = []
    if steps.delay_frames:
      kept.append(f'delay {steps.delay_frames / label_rate:.2f} s ({steps.delay_frames} frames)')
    if steps.smoothing is not None:
      kept.append(f'{steps.smoothing} smoothing over {steps.smoothing_window} frames')
    if steps.scale != 1.0:
      kept.append(f'scale {steps.scale:.3f} about {steps.center:.3f}')
    if steps.bias != 0.0:
      kept.append(f'bias {steps.bias:+.3f}')
    lines.append(f'- {task}: {", ".join(kept) if kept else "nothing (no step raised dev CCC)"}')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Evaluating a prepared split.


def _check_corpus_matches(corpus: input_pipeline.Corpus, model: RestoredModel) -> None:
  """The dataset must give the model the inputs and normalisation it was trained with."""
  corpus.task_indices(model.tasks)
  where = f'{corpus.name} under {corpus.data_dir}'
  for modality in model.modalities:
    if modality not in corpus.modalities:
      raise input_pipeline.CorpusError(f'{where} has no {modality!r} input, which the model uses')
    saved, current = model.info.stats.get(modality), corpus.stats.get(modality)
    same = saved is not None and current is not None and all(
        np.shape(saved[k]) == np.shape(current[k]) and np.allclose(saved[k], current[k])
        for k in ('mean', 'std'))
    if not same:
      raise input_pipeline.CorpusError(
          f'{where} has other {modality!r} normalisation statistics than the dataset the model '
          'was trained on: it was prepared differently; evaluate on the data the model was '
          'trained with (--data_dir)')
  if corpus.window != model.info.window:
    raise input_pipeline.CorpusError(f'{where} has windows of {corpus.window} frames; the model '
                                     f'was trained on {model.info.window}')


def evaluate_split(workdir: str, split: str, checkpoint: str | int = 'best',
                   data_dir: str | None = None) -> dict[str, Any]:
  """Scores a checkpoint on a prepared split, before and after post-processing.

  The dataset is the one the run trained on (`config.dataset` and `config.data_dir` saved with
  the checkpoint), read from `data_dir` when given. Every recording is predicted whole (windows
  averaged where they overlap). On the dev split the post-processing is tuned on the ensemble
  prediction and saved for this checkpoint step; any other split applies the saved one.

  Returns:
    A JSON-able dict, also written to `<workdir>/eval_<split>_step<step>.json`: the checkpoint,
    dataset and split; for a labelled split the tables `ensemble_before`, `ensemble_after` and
    `seed_mean_before` (`{task: {ccc_concat, ccc_seq_mean, pcc, rmse}, 'mean': ...}`, with
    per-seed tables under `seed_mean_before['seeds']`); for an unlabelled split
    `predictions_dir` (one CSV per recording) and a `note`; and the post-processing used.

  Raises:
    FileNotFoundError: no such checkpoint, or (for a split other than dev) no post-processing
      tuned for this checkpoint yet.
    input_pipeline.CorpusError: the dataset is missing or does not match the model.
  """
  model = restore_model(workdir, checkpoint)
  corpus = input_pipeline.open_corpus(model.config['dataset'],
                                      data_dir or model.config['data_dir'])
  corpus.source(split)  # an unknown split fails here, naming the splits there are
  _check_corpus_matches(corpus, model)
  labelled = corpus.is_labelled(split)
  if split == TUNING_SPLIT and not labelled:
    raise input_pipeline.CorpusError(f'{corpus.name}: split {split!r} has no labels to tune '
                                     'post-processing on')
  if split != TUNING_SPLIT:
    postprocessing = load_postprocessing(workdir, model.step)
    if postprocessing is None:
      raise _missing_postprocessing(workdir, model.step, checkpoint)

  tasks = model.tasks
  predictions = evaluation.predict_split(model.graphdef, model.params, corpus, split,
                                         model.modalities, tasks,
                                         batch_size=int(model.config['eval_batch']))
  combined = {name: ensemble(entry['prediction']) for name, entry in predictions.items()}
  if split == TUNING_SPLIT:
    postprocessing = postprocess.tune(
        [(predictions[name]['truth'], combined[name]) for name in sorted(predictions)], tasks)
    save_postprocessing(workdir, model.step, postprocessing, {
        'checkpoint': str(checkpoint), 'dataset': corpus.name, 'tuned_on': split,
        'prediction': f'ensemble of {model.num_seeds} seed(s)'})

  result: dict[str, Any] = {
      'workdir': model.workdir, 'checkpoint': str(checkpoint), 'step': model.step,
      'dataset': corpus.name, 'data_dir': corpus.data_dir, 'split': split,
      'tasks': list(tasks), 'seeds': list(model.config['seeds']),
      'recordings': len(predictions),
      'frames': int(sum(p.shape[0] for p in combined.values())),
      'labelled': labelled, 'postprocess_file': postprocess_path(workdir),
      'postprocessing': postprocessing.to_json()}
  processed = {name: postprocessing.apply(trace).astype(np.float32)
               for name, trace in combined.items()}
  if labelled:
    def scored(traces):
      return evaluation.score({name: {'truth': predictions[name]['truth'],
                                      'prediction': traces[name][None]} for name in traces},
                              tasks)
    result['ensemble_before'] = scored(combined)
    result['ensemble_after'] = scored(processed)
    result['seed_mean_before'] = evaluation.score_seeds(predictions, tasks)
  else:
    directory = os.path.join(model.workdir, 'predictions', f'{split}_step{model.step}')
    os.makedirs(directory, exist_ok=True)
    for name, trace in processed.items():
      write_traces_csv(os.path.join(directory, f'{name}.csv'), trace, tasks,
                       model.info.label_rate)
    result['predictions_dir'] = directory
    result['note'] = (f'{corpus.name} {split} has no labels: no scores. The post-processed '
                      f'predictions of its {len(processed)} recordings are in {directory}')
  path = os.path.join(model.workdir, f'eval_{split}_step{model.step}.json')
  result['path'] = path
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def _count(number: int, noun: str) -> str:
  return f'{number} {noun}' + ('' if number == 1 else 's')


def format_evaluation(result: dict[str, Any]) -> str:
  """The markdown report of an `evaluate_split` result."""
  tasks = result['tasks']
  num_seeds = len(result['seeds'])
  what = ('the model' if num_seeds == 1 else
          f'ensemble: the mean of the {num_seeds} seeds\' predictions')
  lines = [f"## {result['dataset']} {result['split']}: checkpoint {result['checkpoint']} "
           f"(step {result['step']}), {_count(result['recordings'], 'recording')}, "
           f"{result['frames']} frames", '']
  if not result['labelled']:
    lines += [f"Note: {result['note']}.", '']
  else:
    lines += [f'Before post-processing ({what}):', '',
              report.markdown_table(result['ensemble_before'], tasks), '',
              f'After post-processing ({what}; tuned on {TUNING_SPLIT}):', '',
              report.markdown_table(result['ensemble_after'], tasks), '']
    if num_seeds > 1:
      lines += ['Mean over seeds of each seed\'s own scores, before post-processing:', '',
                report.markdown_table(result['seed_mean_before'], tasks), '']
  postprocessing = postprocess.PostProcessing.from_json(result['postprocessing'])
  lines += [f"Post-processing (tuned on {TUNING_SPLIT} for step {result['step']}, "
            f"saved in {result['postprocess_file']}):",
            describe_postprocessing(postprocessing), '', f"Written: {result['path']}"]
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Predicting new recordings.


def waveform_16k(audio, sample_rate: int) -> np.ndarray:
  """Any waveform as the 16 kHz mono float32 the models take, exactly as `audio_io.load_audio`.

  Args:
    audio: `[samples]` or `[samples, channels]` (soundfile's layout). Floats are taken as they
      are (full scale 1.0); integer PCM is scaled to [-1, 1) as soundfile scales it.
    sample_rate: samples per second of `audio`.

  Raises:
    DataError: empty audio, NaN or infinite samples, or a layout that looks like
      `[channels, samples]`.
  """
  audio = np.asarray(audio)
  if np.issubdtype(audio.dtype, np.integer):
    audio = audio / float(np.iinfo(audio.dtype).max + 1)
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim == 2 and audio.shape[1] > audio.shape[0]:
    raise DataError(f'audio has shape {audio.shape}: expected [samples] or [samples, channels]; '
                    'pass audio.T for a [channels, samples] array')
  if audio.ndim not in (1, 2):
    raise DataError(f'audio must be [samples] or [samples, channels], got shape {audio.shape}')
  if audio.size == 0:
    raise DataError('audio contains no samples')
  if int(sample_rate) != sample_rate or sample_rate <= 0:
    raise DataError(f'sample rate must be a positive whole number, got {sample_rate}')
  if not np.all(np.isfinite(audio)):
    raise DataError('audio contains NaN or infinite samples')
  return audio_io.to_16k_mono(audio, int(sample_rate))


# Label frames of waveform on each side of a stretch of log-mel frames that decide their values:
# a log-mel frame's 25 ms window reaches at most WIN_LENGTH samples from its label frame.
_LOGMEL_MARGIN_FRAMES = math.ceil(features.WIN_LENGTH / features.SAMPLES_PER_FRAME)


def log_mel_frames(waveform: np.ndarray, begin: int, end: int) -> np.ndarray:
  """`features.log_mel(waveform)` rows for label frames `[begin, end)`, from a slice of it.

  Each log-mel frame depends only on the samples under its window (zeros outside the waveform),
  so computing it from the waveform plus a margin of `_LOGMEL_MARGIN_FRAMES` label frames on
  each side gives the same values as computing it over the whole recording.
  """
  lead = min(begin, _LOGMEL_MARGIN_FRAMES)
  first = begin - lead
  spf = features.SAMPLES_PER_FRAME
  piece = waveform[first * spf: (end + _LOGMEL_MARGIN_FRAMES) * spf]
  return features.log_mel(piece, num_frames=end - first)[lead * features.LOGMEL_PER_FRAME:]


class Predictor:
  """A trained checkpoint applied to new recordings.

  Usage (in a notebook):

      predictor = Predictor.load('runs/creativeit')           # the best checkpoint
      traces = predictor.predict(audio, 44100, mocap=positions, mocap_rate=60.0)
      traces.shape  # [frames at 25 Hz, len(predictor.tasks)]

  The prediction of a run with several seeds is their ensemble (the mean of the seeds'
  traces). The post-processing tuned on dev for this checkpoint (`launch.evaluate --split=dev`)
  is applied when it exists and `postprocess` is true; `postprocessing` says which is used.

  Memory: besides the 16 kHz waveform (230 MB per hour) and the traces (a few MB per hour),
  only one batch of windows and the log-mel of its span exist at a time. Mocap features are
  computed over the whole recording at once (`features.mocap_features` interpolates gaps
  across it); they take about ten times the size of the marker positions while computed.
  """

  def __init__(self, model: RestoredModel,
               postprocessing: postprocess.PostProcessing | None = None,
               batch_size: int | None = None):
    if postprocessing is not None and postprocessing.tasks != model.tasks:
      raise ValueError(f'post-processing is for tasks {postprocessing.tasks}, the model predicts '
                       f'{model.tasks}')
    self.model = model
    self.postprocessing = postprocessing
    self.batch_size = int(batch_size or model.config['eval_batch'])

  @classmethod
  def load(cls, workdir: str, checkpoint: str | int = 'best', *, postprocess: bool = True,
           batch_size: int | None = None) -> 'Predictor':
    """Restores `checkpoint` ('best', 'latest' or a step) of `workdir` on one device.

    Args:
      workdir: a training run's workdir.
      checkpoint: which checkpoint.
      postprocess: apply the post-processing saved for this checkpoint, if there is one.
      batch_size: windows per model call; defaults to the run's `eval_batch`.
    """
    model = restore_model(workdir, checkpoint)
    postprocessing = load_postprocessing(workdir, model.step) if postprocess else None
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
        `features.read_mocap_csv` returns them). Ignored by models without mocap.
      mocap_rate: mocap frames per second.

    Frame i covers [40 i, 40 i + 40) ms of the audio; a partial last frame counts.
    """
    return self._postprocessed(ensemble(self.predict_seeds(audio, sample_rate, mocap,
                                                           mocap_rate)))

  def _postprocessed(self, prediction: np.ndarray) -> np.ndarray:
    if self.postprocessing is None:
      return prediction
    return self.postprocessing.apply(prediction).astype(np.float32)

  def predict_file(self, audio_path: str, mocap_path: str | None = None) -> np.ndarray:
    """`predict` on an audio file (any format, rate and channel count soundfile reads) and,
    for a model that uses mocap, a mocap CSV file (`features.read_mocap_csv`'s format).

    Raises:
      DataError: a missing, unreadable or empty file, or mocap the model cannot use; the
        message names the file.
    """
    if self.needs_mocap and mocap_path is None:
      raise ValueError(self._mocap_required())
    audio_io.audio_info(audio_path)  # a bad audio file fails before the mocap is read
    take = features.read_mocap_csv(mocap_path) if self.needs_mocap else None
    waveform = audio_io.load_audio(audio_path)
    prediction = ensemble(self._predict_waveform(
        waveform, None if take is None else take.positions, None if take is None else take.rate,
        mocap_source=mocap_path or 'mocap'))
    return self._postprocessed(prediction)

  def predict_seeds(self, audio, sample_rate: int, mocap=None,
                    mocap_rate: float | None = None) -> np.ndarray:
    """Raw per-seed traces `[seeds, frames, tasks]` (no ensemble, no post-processing).

    Windows are the ones the dataset builders cut (`windows.window_starts` with the model's
    window and hop), predicted `batch_size` at a time and averaged where they overlap, as
    `evaluation.predict_split` does for a prepared split.
    """
    return self._predict_waveform(waveform_16k(audio, sample_rate), mocap, mocap_rate)

  def _predict_waveform(self, waveform: np.ndarray, mocap, mocap_rate,
                        mocap_source: str = 'mocap') -> np.ndarray:
    """`predict_seeds` of a 16 kHz mono waveform; `mocap_source` names the mocap in errors."""
    info = self.model.info
    num_frames = features.num_label_frames(waveform.shape[0])
    mocap_features = None
    if self.needs_mocap:
      mocap_features = self._mocap_features(mocap, mocap_rate, num_frames, mocap_source)
    starts = windows.window_starts(num_frames, info.window, info.hop)
    # Windows are averaged where they overlap, summed in float64 as `windows.reassemble` does
    # for a prepared split, but batch by batch instead of holding every window.
    total = np.zeros((self.model.num_seeds, num_frames, len(self.tasks)), np.float64)
    count = np.zeros((num_frames,), np.int64)
    for begin in range(0, len(starts), self.batch_size):
      batch_starts = starts[begin:begin + self.batch_size]
      inputs = self._window_batch(waveform, mocap_features, batch_starts, num_frames)
      predicted = np.asarray(evaluation.predict_windows(self.model.graphdef, self.model.params,
                                                        inputs))  # [seeds, batch, T, tasks]
      for index, start in enumerate(batch_starts):
        end = min(int(start) + info.window, num_frames)
        total[:, start:end] += predicted[:, index, :end - start]
        count[start:end] += 1
    return (total / count[None, :, None]).astype(np.float32)

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
    if abs(mocap_seconds - audio_seconds) > MOCAP_LENGTH_TOLERANCE_S:
      raise DataError(f'{source}: the mocap lasts {mocap_seconds:.2f} s but the audio '
                      f'{audio_seconds:.2f} s; they must agree within '
                      f'{MOCAP_LENGTH_TOLERANCE_S} s (both start at time 0)')
    try:
      return features.mocap_features(positions, float(mocap_rate), num_frames=num_frames)
    except DataError as error:
      raise DataError(f'{source}: {error}') from None

  def _window_batch(self, waveform, mocap_features, starts, num_frames: int):
    """Normalised model inputs for the windows at `starts`, padded to `batch_size` windows."""
    window = self.model.info.window
    batch = {}
    if 'audio' in self.modalities:
      batch['audio'] = np.stack([windows.slice_window(waveform, s, window,
                                                      features.SAMPLES_PER_FRAME)
                                 for s in starts])
    if 'logmel' in self.modalities:
      # One log-mel computation for the batch's span; past the recording's last frame a window's
      # log-mel rows are zero padding, as in the prepared datasets.
      first, end = int(starts[0]), min(int(starts[-1]) + window, num_frames)
      span = log_mel_frames(waveform, first, end)
      batch['logmel'] = np.stack([windows.slice_window(span, s - first, window,
                                                       features.LOGMEL_PER_FRAME)
                                  for s in starts])
    if 'mocap' in self.modalities:
      batch['mocap'] = np.stack([windows.slice_window(mocap_features, s, window) for s in starts])
    missing = self.batch_size - len(starts)
    if missing:  # one compiled program: the last batch repeats its last window
      batch = {k: np.concatenate([v, np.repeat(v[-1:], missing, axis=0)]) for k, v in batch.items()}
    return input_pipeline.normalise(batch, self.model.info.stats, self.modalities)


# ---------------------------------------------------------------------------------------------
# Trace CSV files.


def write_traces_csv(path: str, traces: np.ndarray, tasks: Sequence[str],
                     label_rate: int = features.LABEL_RATE) -> None:
  """Writes `traces` `[frames, tasks]` as CSV: header `time,<task>,...`, one row per frame.

  `time` is the start of the frame in seconds (frame i: i / label_rate, i.e. 0.00, 0.04, ...).
  """
  traces = np.asarray(traces)
  if traces.ndim != 2 or traces.shape[1] != len(tasks):
    raise ValueError(f'traces must be [frames, {len(tasks)}], got shape {traces.shape}')
  times = np.arange(traces.shape[0]) / label_rate
  table = np.column_stack([times, traces])
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  np.savetxt(path, table, delimiter=',', header=','.join(['time', *tasks]), comments='',
             fmt=['%.2f'] + ['%.6f'] * len(tasks))


def read_traces_csv(path: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Reads a `time,<task>,...` CSV (as written by `write_traces_csv`): `(times, {task: values})`.

  Times are in seconds and increase row by row; rows need not be at 25 Hz. An empty field or
  `nan` is a missing value.

  Raises:
    DataError: missing file, a header that does not start with `time`, no rows, non-numeric
      fields, or times that are missing or do not increase; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(f'{path}: labels file not found')
  with open(path, encoding='utf-8') as f:
    header, _, body = f.read().partition('\n')
  columns = [name.strip() for name in header.strip().split(',')]
  if len(columns) < 2 or columns[0] != 'time' or not all(columns[1:]):
    raise DataError(f'{path}: header must be "time,<task>,..."; got "{header.strip()[:80]}"')
  if not body.strip():
    raise DataError(f'{path}: no rows after the header')
  # Empty fields are missing values; numpy's parser needs them spelled out.
  body = re.sub(r'(?<=,)(?=,|\r?\n|\r|$)', 'nan', body)
  try:
    table = np.loadtxt(io.StringIO(body), delimiter=',', dtype=np.float64, ndmin=2)
  except ValueError as error:
    raise DataError(f'{path}: rows cannot be parsed as numbers ({error})') from None
  if table.shape[1] != len(columns):
    raise DataError(f'{path}: rows have {table.shape[1]} columns, the header {len(columns)}')
  times = table[:, 0]
  if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
    raise DataError(f'{path}: the time column must hold numbers that increase row by row')
  return times, {name: table[:, k + 1] for k, name in enumerate(columns[1:])}


# ---------------------------------------------------------------------------------------------
# One recording from files to files (what `python -m launch.predict` does).


def labels_on_frames(times: np.ndarray, values: np.ndarray, num_frames: int,
                     label_rate: int = features.LABEL_RATE) -> np.ndarray:
  """A gold trace at the frame starts `i / label_rate`; NaN outside the labels' time span.

  Missing (NaN) gold values are skipped; between known values the gold is interpolated
  linearly, so labels at 25 Hz with times i * 0.04 land on the frames exactly.
  """
  known = np.isfinite(values)
  frame_times = np.arange(num_frames) / label_rate
  on_frames = np.full(num_frames, np.nan)
  if known.any():
    inside = (frame_times >= times[known][0] - 1e-9) & (frame_times <= times[known][-1] + 1e-9)
    on_frames[inside] = np.interp(frame_times[inside], times[known], values[known])
  return on_frames


def plot_traces(path: str, prediction: np.ndarray, tasks: Sequence[str], label_rate: int,
                title: str, gold: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
  """Writes a PNG with one panel per task: the predicted trace over time and, for the tasks in
  `gold` (task -> (times, values)), the gold standard."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # no display needed; must precede importing pyplot
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  times = np.arange(prediction.shape[0]) / label_rate
  figure, axes = pyplot.subplots(len(tasks), 1, sharex=True, squeeze=False,
                                 figsize=(10, 1.2 + 1.8 * len(tasks)))
  for axis, task, column in zip(axes[:, 0], tasks, prediction.T):
    axis.plot(times, column, label='prediction', linewidth=0.8)
    if gold and task in gold:
      axis.plot(*gold[task], label='gold standard', linewidth=0.8)
    axis.set_ylabel(task)
    axis.grid(alpha=0.3)
  axes[0, 0].legend(loc='upper right', fontsize='small')
  axes[0, 0].set_title(title, fontsize='medium')
  axes[-1, 0].set_xlabel('time (s)')
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def predict_recording(workdir: str, audio: str, output: str, *, mocap: str | None = None,
                      plot: str | None = None, labels: str | None = None,
                      checkpoint: str | int = 'best', postprocess: bool = True) -> dict[str, Any]:
  """Predicts one recording from files: writes the traces CSV (and a plot); returns a summary.

  Args:
    workdir: the training run's workdir.
    audio: audio file (any format, rate and channel count soundfile reads).
    output: CSV to write, `time,<task>,...` (`write_traces_csv`).
    mocap: mocap CSV (`features.read_mocap_csv`), required by a model trained with mocap and
      ignored by one without.
    plot: PNG to draw the traces in.
    labels: a gold-standard CSV in the output's format (any rate; columns for tasks the model
      does not predict are ignored): drawn in the plot, and each task's CCC over the frames the
      labels span (gold interpolated to the frame starts) goes into the summary.
    checkpoint: 'best', 'latest' or a step.
    postprocess: apply the post-processing tuned on dev for the checkpoint, if there is one.

  Returns:
    `output`, `frames`, `seconds`, `tasks`, `step`, `seeds`, `postprocessing` (a description or
    None), `postprocess_requested`, `mocap_ignored`, and `ccc` (task -> CCC) with labels, `plot`
    with a plot.
  """
  from ccc_jax import metrics  # pylint: disable=g-import-not-at-top
  label_columns = None
  if labels is not None:  # a bad labels file fails before any prediction work
    label_times, label_columns = read_traces_csv(labels)
  predictor = Predictor.load(workdir, checkpoint, postprocess=postprocess)
  tasks = predictor.tasks
  gold = None
  if label_columns is not None:
    gold = {task: (label_times, values) for task, values in label_columns.items()
            if task in tasks}
    if not gold:
      raise DataError(f'{labels}: columns {sorted(label_columns)} name none of the tasks the '
                      f'model predicts, {list(tasks)}')
  prediction = predictor.predict_file(audio, mocap)
  write_traces_csv(output, prediction, tasks, predictor.label_rate)
  summary: dict[str, Any] = {
      'output': os.fspath(output), 'frames': prediction.shape[0], 'tasks': list(tasks),
      'seconds': prediction.shape[0] / predictor.label_rate, 'step': predictor.step,
      'seeds': predictor.model.num_seeds,
      'postprocessing': (None if predictor.postprocessing is None else
                         describe_postprocessing(predictor.postprocessing)),
      'postprocess_requested': postprocess,
      'mocap_ignored': mocap is not None and not predictor.needs_mocap}
  if gold is not None:
    summary['ccc'] = {}
    for k, task in enumerate(tasks):
      if task in gold:
        on_frames = labels_on_frames(*gold[task], prediction.shape[0], predictor.label_rate)
        known = np.isfinite(on_frames)
        summary['ccc'][task] = (metrics.concordance_cc(on_frames[known], prediction[known, k])
                                if known.sum() >= 2 else math.nan)
  if plot is not None:
    kind = 'raw' if predictor.postprocessing is None else 'post-processed'
    plot_traces(plot, prediction, tasks, predictor.label_rate,
                f'{os.path.basename(audio)}: checkpoint step {predictor.step}, {kind}', gold)
    summary['plot'] = os.fspath(plot)
  return summary


def format_prediction(summary: dict[str, Any]) -> str:
  """What `launch.predict` prints about a `predict_recording` summary."""
  seeds = summary['seeds']
  lines = [f"wrote {summary['output']}: {summary['frames']} frames "
           f"({summary['seconds']:.2f} s, one per 40 ms), columns time,"
           f"{','.join(summary['tasks'])}; checkpoint step {summary['step']}, "
           + ('1 seed' if seeds == 1 else f'ensemble of {seeds} seeds (mean of their predictions)')]
  if summary['postprocessing'] is not None:
    lines.append('post-processing tuned on dev, applied:\n' + summary['postprocessing'])
  elif summary['postprocess_requested']:
    lines.append(f"no post-processing tuned for step {summary['step']}: raw predictions (tune "
                 'it with python -m launch.evaluate --split=dev)')
  else:
    lines.append('post-processing off: raw predictions')
  if summary['mocap_ignored']:
    lines.append('note: the model does not use mocap; --mocap was ignored')
  for task, value in summary.get('ccc', {}).items():
    lines.append(f'CCC against the labels, {task}: {value:.4f}')
  if 'plot' in summary:
    lines.append(f"plot: {summary['plot']}")
  return '\n'.join(lines)
