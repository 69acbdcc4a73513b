"""Post-processing of predicted traces: delay shift, smoothing, scale and bias, tuned on dev.

Owns the evaluation convention of the field (AVEC 2016/2018, MuSe): each step is tuned on the dev
split and kept only if it raises the dev CCC, then applied unchanged to test and at inference;
and the file that keeps the tuned steps per checkpoint, `<workdir>/postprocess.json` (`save`,
`load`, `describe`). Steps, in the order they are tuned and applied, per task:

1. delay: the prediction is moved `delay_frames` label frames later (annotations lag the signal
   by the raters' reaction time, so a model that follows the signal leads the gold standard);
2. smoothing: a median or moving-average filter of an odd number of frames;
3. scale: `p' = (p - center) * scale + center`, where `center` is the mean and
   `scale = std(gold_dev) / std(pred_dev)` are measured on the dev predictions after steps 1-2;
4. bias: `p' = p + bias` with `bias = mean(gold_dev) - mean(pred_dev)` measured after steps 1-3.
   Scaling about the dev mean leaves that mean unchanged, so `bias` does not depend on whether
   the scale step was kept.

Everything is counted in label frames (40 ms at 25 Hz): the default delay grid 0..240 frames in
steps of 10 is 0-9.6 s in 0.4 s steps, the RECOLA convention. The tuned `PostProcessing` is a plain
dict in JSON (`to_json`/`from_json`), saved next to the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from ccc_jax import files
from ccc_jax.errors import CheckpointError
from ccc_jax.features import LABEL_RATE
from ccc_jax.metrics import concordance_cc

FILE_NAME = 'postprocess.json'
# Post-processing is tuned on this split and applied unchanged to every other one.
TUNING_SPLIT = 'dev'

SMOOTHING_KINDS = ('median', 'mean')
STEPS = ('delay', 'smoothing', 'scale', 'bias')
METRICS = ('ccc_concat', 'ccc_seq_mean')
DEFAULT_DELAY_GRID_FRAMES = range(0, 241, 10)  # 0-9.6 s in 0.4 s steps at 25 Hz.
DEFAULT_SMOOTHING_WINDOWS = tuple(range(5, 102, 2))  # 0.2-4 s, every odd length.

# A step is kept only if it raises dev CCC by more than this: a "gain" of a few ulps (a scale of
# 1 +- 1e-16 on an already calibrated prediction) is rounding noise, not an improvement.
_MIN_GAIN = 1e-10


def _checked_trace(prediction, what: str = 'prediction') -> np.ndarray:
  """`prediction` as float64 `[frames]` or `[frames, tasks]`, non-empty and finite."""
  trace = np.asarray(prediction, dtype=np.float64)
  if trace.ndim not in (1, 2) or trace.shape[0] == 0:
    raise ValueError(f'{what} must be a non-empty [frames] or [frames, tasks] array, '
                     f'got shape {trace.shape}')
  if not np.all(np.isfinite(trace)):
    raise ValueError(f'{what} holds NaN or Inf')
  return trace


def shift(prediction, frames: int) -> np.ndarray:
  """Delays `prediction` (`[frames]` or `[frames, tasks]`) by `frames` label frames.

  The value predicted at frame t moves to frame t + `frames`. The length is kept: the last
  `frames` values fall off the end and the first `frames` frames repeat the first predicted value
  (edge padding: the best guess for frames before the model's first output, and it adds no jump
  that would pull CCC the way a zero fill would). A delay at least as long as the recording
  leaves only the first value.
  """
  trace = _checked_trace(prediction)
  if int(frames) != frames or frames < 0:
    raise ValueError(f'delay must be a non-negative whole number of frames, got {frames}')
  frames = min(int(frames), trace.shape[0])
  if frames == 0:
    return trace.copy()
  padding = np.repeat(trace[:1], frames, axis=0)
  return np.concatenate([padding, trace[:trace.shape[0] - frames]], axis=0)


def smooth(prediction, kind: str, window: int) -> np.ndarray:
  """Median (`kind='median'`) or moving-average (`'mean'`) filter of `window` frames along time.

  `window` is odd so the filter is centred (no delay of its own). Each task is filtered
  separately; the edges repeat the first and last values (`mode='nearest'`), so the length is
  kept. A window of 1 returns the prediction unchanged.
  """
  trace = _checked_trace(prediction)
  if kind not in SMOOTHING_KINDS:
    raise ValueError(f'smoothing kind must be one of {SMOOTHING_KINDS}, got {kind!r}')
  if int(window) != window or window < 1 or window % 2 == 0:
    raise ValueError(f'smoothing window must be an odd positive number of frames, got {window}')
  window = int(window)
  columns = trace.reshape(trace.shape[0], -1)
  if kind == 'median':
    smoothed = [ndimage.median_filter(column, size=window, mode='nearest') for column in columns.T]
  else:
    smoothed = [ndimage.uniform_filter1d(column, size=window, mode='nearest')
                for column in columns.T]
  return np.stack(smoothed, axis=1).reshape(trace.shape)


@dataclasses.dataclass(frozen=True)
class TaskPostProcessing:
  """One task's post-processing. Neutral values (the defaults) mean the step is not applied.

  Attributes:
    delay_frames: label frames the prediction is moved later (see `shift`).
    smoothing: 'median', 'mean' or None for no smoothing.
    smoothing_window: odd window in frames when `smoothing` is set, else None.
    scale: factor applied about `center` (1.0: not applied).
    center: the dev prediction mean after delay and smoothing, the point `scale` is applied about.
    bias: added last (0.0: not applied).
    dev_ccc_before: the dev CCC of the raw prediction, when this was tuned (else None).
    dev_ccc_after: the dev CCC after the kept steps, when this was tuned (else None).
  """
  delay_frames: int = 0
  smoothing: str | None = None
  smoothing_window: int | None = None
  scale: float = 1.0
  center: float = 0.0
  bias: float = 0.0
  dev_ccc_before: float | None = None
  dev_ccc_after: float | None = None

  def __post_init__(self):
    if int(self.delay_frames) != self.delay_frames or self.delay_frames < 0:
      raise ValueError(f'delay_frames must be a non-negative integer, got {self.delay_frames}')
    if (self.smoothing is None) != (self.smoothing_window is None):
      raise ValueError('smoothing and smoothing_window must be set together, got '
                       f'{self.smoothing!r} and {self.smoothing_window!r}')
    if self.smoothing is not None and self.smoothing not in SMOOTHING_KINDS:
      raise ValueError(f'smoothing must be one of {SMOOTHING_KINDS} or None, got '
                       f'{self.smoothing!r}')
    if not all(np.isfinite([self.scale, self.center, self.bias])):
      raise ValueError(f'scale, center and bias must be finite, got {self.scale}, '
                       f'{self.center}, {self.bias}')

  @property
  def kept(self) -> tuple[str, ...]:
    """Names of the steps this applies, in order (a subset of `STEPS`)."""
    applied = {'delay': self.delay_frames != 0, 'smoothing': self.smoothing is not None,
               'scale': self.scale != 1.0, 'bias': self.bias != 0.0}
    return tuple(step for step in STEPS if applied[step])

  def apply(self, trace) -> np.ndarray:
    """The post-processed `[frames]` trace of one task. Steps not kept are skipped exactly."""
    trace = _checked_trace(trace, 'trace')
    if trace.ndim != 1:
      raise ValueError(f'one task\'s trace must be [frames], got shape {trace.shape}')
    if self.delay_frames:
      trace = shift(trace, self.delay_frames)
    if self.smoothing is not None:
      trace = smooth(trace, self.smoothing, self.smoothing_window)
    if self.scale != 1.0:
      trace = (trace - self.center) * self.scale + self.center
    if self.bias != 0.0:
      trace = trace + self.bias
    return trace


@dataclasses.dataclass(frozen=True)
class PostProcessing:
  """Post-processing of every task; `per_task` is ordered like the prediction's task columns.

  Attributes:
    per_task: task name -> its `TaskPostProcessing`, in column order.
    metric: the dev metric it was tuned for ('ccc_concat' or 'ccc_seq_mean').
  """
  per_task: dict[str, TaskPostProcessing]
  metric: str = 'ccc_concat'

  def __post_init__(self):
    if not self.per_task:
      raise ValueError('post-processing needs at least one task')
    if self.metric not in METRICS:
      raise ValueError(f'metric must be one of {METRICS}, got {self.metric!r}')

  @classmethod
  def identity(cls, tasks: Sequence[str], metric: str = 'ccc_concat') -> 'PostProcessing':
    """Post-processing that changes nothing."""
    return cls({task: TaskPostProcessing() for task in _checked_tasks(tasks)}, metric)

  @property
  def tasks(self) -> tuple[str, ...]:
    return tuple(self.per_task)

  @property
  def kept(self) -> dict[str, tuple[str, ...]]:
    """Task -> names of the steps applied to it."""
    return {task: steps.kept for task, steps in self.per_task.items()}

  def apply(self, prediction) -> np.ndarray:
    """Post-processes one recording's `[frames, tasks]` prediction, each task on its own."""
    prediction = _checked_trace(prediction)
    if prediction.ndim != 2 or prediction.shape[1] != len(self.per_task):
      raise ValueError(f'prediction must be [frames, {len(self.per_task)} tasks] '
                       f'{self.tasks}, got shape {prediction.shape}')
    return np.stack([steps.apply(prediction[:, k])
                     for k, steps in enumerate(self.per_task.values())], axis=1)

  def to_json(self) -> dict[str, Any]:
    """A plain dict (json.dump-able); `kept` is written for readers and checked on reading."""
    return {'metric': self.metric,
            'tasks': {task: {**dataclasses.asdict(steps), 'kept': list(steps.kept)}
                      for task, steps in self.per_task.items()}}

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> 'PostProcessing':
    """Inverse of `to_json`. A `kept` list that disagrees with the settings is an error."""
    per_task = {}
    for task, fields in data['tasks'].items():
      fields = dict(fields)
      kept = fields.pop('kept', None)
      steps = TaskPostProcessing(**fields)
      if kept is not None and tuple(kept) != steps.kept:
        raise ValueError(f'task {task!r}: kept steps {kept} disagree with the settings, which '
                         f'apply {list(steps.kept)}')
      per_task[task] = steps
    return cls(per_task, data.get('metric', 'ccc_concat'))


def _checked_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
  tasks = tuple(tasks)
  if not tasks or len(set(tasks)) != len(tasks):
    raise ValueError(f'tasks must be non-empty and distinct, got {tasks}')
  return tasks


def _checked_recordings(dev_recordings, num_tasks: int) -> list[tuple[np.ndarray, np.ndarray]]:
  recordings = []
  for index, pair in enumerate(dev_recordings):
    truth, prediction = pair
    truth = _checked_trace(truth, f'dev recording {index}: truth')
    prediction = _checked_trace(prediction, f'dev recording {index}: prediction')
    for name, array in (('truth', truth), ('prediction', prediction)):
      if array.ndim != 2 or array.shape[1] != num_tasks:
        raise ValueError(f'dev recording {index}: {name} must be [frames, {num_tasks} tasks], '
                         f'got shape {array.shape}')
    if truth.shape[0] != prediction.shape[0]:
      raise ValueError(f'dev recording {index}: truth has {truth.shape[0]} frames but '
                       f'prediction has {prediction.shape[0]}')
    recordings.append((truth, prediction))
  if not recordings:
    raise ValueError('tuning needs at least one dev recording')
  return recordings


def _dev_ccc(recordings, tasks, per_task: Sequence[TaskPostProcessing], metric: str) -> np.ndarray:
  """Dev CCC `[tasks]` after `per_task`, applied to each recording separately; NaN -> -inf.

  The same numbers `StreamingMetrics` reports ('ccc_seq_mean' skips recordings whose CCC is
  undefined), computed directly with `concordance_cc`, which is several times faster here.
  """
  truth, processed = _processed(recordings, per_task)
  if metric == 'ccc_concat':
    scores = [concordance_cc(np.concatenate([t[:, k] for t in truth]),
                             np.concatenate([p[:, k] for p in processed]))
              for k in range(len(tasks))]
  else:
    scores = []
    for k in range(len(tasks)):
      per_recording = np.array([concordance_cc(t[:, k], p[:, k]) for t, p in zip(truth, processed)])
      defined = per_recording[~np.isnan(per_recording)]
      scores.append(defined.mean() if defined.size else np.nan)
  scores = np.asarray(scores, dtype=np.float64)
  return np.where(np.isnan(scores), -np.inf, scores)  # an undefined CCC never wins.


def _processed(recordings, per_task: Sequence[TaskPostProcessing]):
  """Per recording, the gold `[frames, tasks]` and the prediction after `per_task`."""
  truth = [t for t, _ in recordings]
  processed = [np.stack([steps.apply(p[:, k]) for k, steps in enumerate(per_task)], axis=1)
               for _, p in recordings]
  return truth, processed


def tune(dev_recordings: Iterable[tuple[np.ndarray, np.ndarray]],
         tasks: Sequence[str],
         *,
         delay_grid_frames: Iterable[int] = DEFAULT_DELAY_GRID_FRAMES,
         smoothing_windows: Iterable[int] = DEFAULT_SMOOTHING_WINDOWS,
         smoothing_kinds: Sequence[str] = SMOOTHING_KINDS,
         metric: str = 'ccc_concat') -> PostProcessing:
  """Tunes post-processing on dev, greedily, step by step, each task on its own.

  For each step in turn (delay, smoothing, scale, bias) every task takes the grid setting with
  the best dev CCC, but only if that beats its current dev CCC by more than rounding noise;
  otherwise the step is left out for that task. Candidates are applied to each recording
  separately (a delay never carries one recording into the next) and scored with `metric`:
  'ccc_concat' (one CCC over all dev frames, the AVEC convention) or 'ccc_seq_mean'.

  Args:
    dev_recordings: (truth `[frames, tasks]`, prediction `[frames, tasks]`) per dev recording.
    tasks: task names, in column order.
    delay_grid_frames: delays to try, in label frames (0 is always the baseline).
    smoothing_windows: odd window lengths in frames to try with each of `smoothing_kinds`.
    smoothing_kinds: filters to try, from 'median' and 'mean'.
    metric: 'ccc_concat' or 'ccc_seq_mean'.

  Returns:
    The tuned `PostProcessing`, with the dev CCC before and after in each task's entry.
  """
  tasks = _checked_tasks(tasks)
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
  recordings = _checked_recordings(dev_recordings, len(tasks))
  for kind in smoothing_kinds:
    if kind not in SMOOTHING_KINDS:
      raise ValueError(f'smoothing kind must be one of {SMOOTHING_KINDS}, got {kind!r}')

  current = [TaskPostProcessing() for _ in tasks]
  best = _dev_ccc(recordings, tasks, current, metric)
  before = best.copy()

  def keep_best(candidates: list[list[TaskPostProcessing]]) -> None:
    """Per task, adopts the best of `candidates` (one setting per task each) if it gains."""
    nonlocal current, best
    for candidate in candidates:
      scores = _dev_ccc(recordings, tasks, candidate, metric)
      gains = scores > best + _MIN_GAIN
      current = [new if gain else old for new, old, gain in zip(candidate, current, gains)]
      best = np.where(gains, scores, best)

  keep_best([[dataclasses.replace(steps, delay_frames=int(delay)) for steps in current]
             for delay in delay_grid_frames if delay != 0])
  keep_best([[dataclasses.replace(steps, smoothing=kind, smoothing_window=int(window))
              for steps in current]
             for kind in smoothing_kinds for window in smoothing_windows])

  truth, processed = (np.concatenate(part) for part in _processed(recordings, current))
  center, spread = processed.mean(axis=0), processed.std(axis=0)
  scale = truth.std(axis=0) / np.where(spread > 0, spread, np.nan)
  keep_best([[dataclasses.replace(steps, scale=float(scale[k]), center=float(center[k]))
              if np.isfinite(scale[k]) else steps  # a constant prediction cannot be rescaled.
              for k, steps in enumerate(current)]])

  truth, processed = (np.concatenate(part) for part in _processed(recordings, current))
  bias = truth.mean(axis=0) - processed.mean(axis=0)
  keep_best([[dataclasses.replace(steps, bias=float(bias[k])) for k, steps in enumerate(current)]])

  def reported(score: float) -> float | None:
    return float(score) if np.isfinite(score) else None

  return PostProcessing(
      {task: dataclasses.replace(steps, dev_ccc_before=reported(before[k]),
                                 dev_ccc_after=reported(best[k]))
       for k, (task, steps) in enumerate(zip(tasks, current))},
      metric)


# ---------------------------------------------------------------------------------------------
# The post-processing file of a workdir: one entry per checkpoint step.


def path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), FILE_NAME)


def _read_file(file_path: str) -> dict[str, Any]:
  try:
    with open(file_path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise CheckpointError(f'{file_path}: not valid JSON ({error}); delete it and run '
                          'python -m launch.evaluate --split=dev again') from None
  if not isinstance(data, dict) or not isinstance(data.get('steps'), dict):
    raise CheckpointError(f'{file_path}: expected {{"steps": {{STEP: ...}}}}; delete it and run '
                          'python -m launch.evaluate --split=dev again')
  return data


def save(workdir: str, step: int, postprocessing: PostProcessing, details: dict[str, Any]) -> str:
  """Records `postprocessing` as the one tuned for checkpoint `step`; returns the file's path.

  Entries of other steps in the file are kept. The file is replaced atomically.
  """
  file_path = path(workdir)
  data = _read_file(file_path) if os.path.exists(file_path) else {'steps': {}}
  data['steps'][str(int(step))] = {'step': int(step), **details,
                                   'postprocessing': postprocessing.to_json()}
  files.write_json(file_path, data)
  return file_path


def load(workdir: str, step: int) -> PostProcessing | None:
  """The post-processing tuned on dev for checkpoint `step`, or None if none was tuned."""
  file_path = path(workdir)
  if not os.path.exists(file_path):
    return None
  entry = _read_file(file_path)['steps'].get(str(int(step)))
  if entry is None:
    return None
  try:
    return PostProcessing.from_json(entry['postprocessing'])
  except (KeyError, TypeError, ValueError) as error:
    raise CheckpointError(f'{file_path}: the entry for step {step} is invalid ({error})') from None


def describe(postprocessing: PostProcessing, label_rate: int = LABEL_RATE) -> str:
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
