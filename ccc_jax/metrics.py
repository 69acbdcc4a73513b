"""Evaluation metrics: exact CCC, PCC and RMSE in float64, per recording and over a whole split.

Owns the numbers we report. `concordance_cc` matches `audmetric.concordance_cc` (population
moments, NaN where undefined). `StreamingMetrics` accumulates sufficient statistics per recording
and per task, chunk by chunk, with the pairwise-update formulas of Chan et al. (no `E[x^2] -
E[x]^2` cancellation), and reports both evaluation conventions of the field:

- `ccc_concat`: one CCC over all frames of all recordings concatenated (AVEC 2016/2018 CES, MuSe);
- `ccc_seq_mean`: the mean over recordings of per-recording CCCs (AVEC 2018 GES).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import numpy as np


def _pair(truth, prediction) -> tuple[np.ndarray, np.ndarray]:
  truth = np.asarray(truth, dtype=np.float64).reshape(-1)
  prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
  if truth.shape != prediction.shape:
    raise ValueError(f'truth has {truth.size} values but prediction has {prediction.size}')
  return truth, prediction


def concordance_cc(truth, prediction) -> float:
  """Population concordance correlation coefficient of two 1-D arrays; NaN where undefined.

  Undefined: fewer than two values, or both arrays constant and equal (as `audmetric`).
  """
  truth, prediction = _pair(truth, prediction)
  if truth.size < 2:
    return math.nan
  mt, mp = truth.mean(), prediction.mean()
  dt, dp = truth - mt, prediction - mp
  denominator = np.mean(dt * dt) + np.mean(dp * dp) + (mt - mp) ** 2
  if denominator == 0:
    return math.nan
  return float(2.0 * np.mean(dt * dp) / denominator)


def pearson_cc(truth, prediction) -> float:
  """Pearson correlation coefficient of two 1-D arrays; NaN where either is constant."""
  truth, prediction = _pair(truth, prediction)
  if truth.size < 2:
    return math.nan
  dt, dp = truth - truth.mean(), prediction - prediction.mean()
  denominator = math.sqrt(np.mean(dt * dt) * np.mean(dp * dp))
  if denominator == 0:
    return math.nan
  return float(np.mean(dt * dp) / denominator)


def merge_moments(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
  """Count, mean and centred sum of squares of two blocks merged (Chan et al.): `(n, mean, m2)`.

  Exact, and free of the cancellation of the one-pass `E[x^2] - E[x]^2` form, for any split of
  the data into blocks. Works element-wise on arrays (per task or per feature dimension).
  """
  n = n_a + n_b
  safe = np.maximum(n, 1)
  delta = mean_b - mean_a
  return n, mean_a + delta * n_b / safe, m2_a + m2_b + delta * delta * n_a * n_b / safe


def block_moments(values) -> tuple[int, np.ndarray, np.ndarray]:
  """Count, mean and centred sum of squares of the rows of one block, in float64."""
  values = np.asarray(values, dtype=np.float64)
  if values.shape[0] == 0:
    return 0, np.zeros(values.shape[1:]), np.zeros(values.shape[1:])
  mean = values.mean(axis=0)
  return values.shape[0], mean, ((values - mean) ** 2).sum(axis=0)


class RunningMoments:
  """Per-dimension mean and population standard deviation over many blocks of rows, in float64.

  Each block is centred on its own mean before squaring and merged with `merge_moments`.
  """

  def __init__(self):
    self.count, self.mean, self.m2 = 0, 0.0, 0.0

  def add(self, values) -> None:
    """Adds the rows of `values` (`[n, dim]`, or `[n]` for a scalar statistic)."""
    self.merge(*block_moments(values))

  def merge(self, count, mean, m2) -> None:
    """Adds a block given by its `block_moments` (computed elsewhere, e.g. in a worker
    process): the same result, bit for bit, as `add` of the block's rows."""
    if count:
      self.count, self.mean, self.m2 = merge_moments(self.count, self.mean, self.m2,
                                                     count, mean, m2)

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))

  def to_json(self, min_std: float) -> dict[str, Any]:
    """{'mean': ..., 'std': ...} as JSON-ready floats (lists for vector statistics); a
    standard deviation below `min_std` (a constant input) is stored as 1, so that normalising
    only centres it, never divides by ~0."""
    std = np.where(self.std < min_std, 1.0, self.std)
    return {'mean': np.asarray(self.mean).tolist(), 'std': np.asarray(std).tolist()}


def concordance_cc_per_column(truth, prediction) -> np.ndarray:
  """Population CCC of each column of two `[frames, columns]` arrays (NaN where undefined)."""
  truth = np.asarray(truth, dtype=np.float64)
  prediction = np.asarray(prediction, dtype=np.float64)
  if truth.shape != prediction.shape or truth.ndim != 2:
    raise ValueError(f'truth {truth.shape} and prediction {prediction.shape} must both be '
                     '[frames, columns]')
  return _Stats.of(truth, prediction, np.ones(truth.shape, bool)).ccc()


@dataclasses.dataclass
class _Stats:
  """Running count, means, centred sums of squares and co-moment, and squared error (per task)."""
  n: np.ndarray
  mean_t: np.ndarray
  mean_p: np.ndarray
  m2_t: np.ndarray
  m2_p: np.ndarray
  c_tp: np.ndarray
  sse: np.ndarray

  @classmethod
  def zeros(cls, tasks: int) -> '_Stats':
    return cls(*(np.zeros(tasks) for _ in range(7)))

  @classmethod
  def of(cls, truth: np.ndarray, prediction: np.ndarray, valid: np.ndarray) -> '_Stats':
    """Statistics of `[frames, tasks]` arrays over the frames where `valid` `[frames, tasks]`."""
    n = valid.sum(axis=0).astype(np.float64)
    safe = np.maximum(n, 1)
    t = np.where(valid, truth, 0.0)
    p = np.where(valid, prediction, 0.0)
    mean_t, mean_p = t.sum(0) / safe, p.sum(0) / safe
    dt = np.where(valid, t - mean_t, 0.0)
    dp = np.where(valid, p - mean_p, 0.0)
    return cls(n, mean_t, mean_p, (dt * dt).sum(0), (dp * dp).sum(0), (dt * dp).sum(0),
               np.where(valid, (t - p) ** 2, 0.0).sum(0))

  def merge(self, other: '_Stats') -> '_Stats':
    """Chan et al.'s pairwise combination: exact, and stable for any chunking."""
    n, mean_t, m2_t = merge_moments(self.n, self.mean_t, self.m2_t, other.n, other.mean_t,
                                    other.m2_t)
    _, mean_p, m2_p = merge_moments(self.n, self.mean_p, self.m2_p, other.n, other.mean_p,
                                    other.m2_p)
    weight = self.n * other.n / np.maximum(n, 1)
    c_tp = (self.c_tp + other.c_tp
            + (other.mean_t - self.mean_t) * (other.mean_p - self.mean_p) * weight)
    return _Stats(n=n, mean_t=mean_t, mean_p=mean_p, m2_t=m2_t, m2_p=m2_p, c_tp=c_tp,
                  sse=self.sse + other.sse)

  def ccc(self) -> np.ndarray:
    with np.errstate(invalid='ignore', divide='ignore'):
      den = self.m2_t + self.m2_p + self.n * (self.mean_t - self.mean_p) ** 2
      return np.where((den > 0) & (self.n > 0), 2 * self.c_tp / np.where(den > 0, den, 1), np.nan)

  def pcc(self) -> np.ndarray:
    with np.errstate(invalid='ignore', divide='ignore'):
      den = np.sqrt(self.m2_t * self.m2_p)
      return np.where(den > 0, self.c_tp / np.where(den > 0, den, 1), np.nan)

  def rmse(self) -> np.ndarray:
    with np.errstate(invalid='ignore', divide='ignore'):
      return np.where(self.n > 0, np.sqrt(self.sse / np.maximum(self.n, 1)), np.nan)


class StreamingMetrics:
  """Accumulates per-recording statistics over many batches; reports CCC, PCC and RMSE per task.

  Feed it whole recordings or consecutive chunks of them, in any order:
  `update(recording_id, truth [frames, tasks], prediction [frames, tasks], mask [frames])`.
  """

  def __init__(self, tasks: Sequence[str]):
    self.tasks = tuple(tasks)
    self._recordings: dict[str, _Stats] = {}

  def update(self, recording: str, truth, prediction, mask=None) -> None:
    truth = np.asarray(truth, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    if truth.ndim == 1:
      truth, prediction = truth[:, None], prediction.reshape(-1, 1)
    if truth.shape != prediction.shape or truth.shape[1] != len(self.tasks):
      raise ValueError(f'recording {recording!r}: truth {truth.shape} and prediction '
                       f'{prediction.shape} must both be [frames, {len(self.tasks)} tasks]')
    valid = np.ones(truth.shape, bool) if mask is None else np.asarray(mask) > 0
    if valid.ndim == 1:
      valid = np.broadcast_to(valid[:, None], truth.shape)
    if not np.all(np.isfinite(prediction[valid])):
      raise ValueError(f'recording {recording!r}: prediction holds NaN or Inf')
    chunk = _Stats.of(truth, prediction, valid)
    previous = self._recordings.get(recording)
    self._recordings[recording] = chunk if previous is None else previous.merge(chunk)

  @property
  def recordings(self) -> list[str]:
    return list(self._recordings)

  def per_recording_ccc(self) -> dict[str, np.ndarray]:
    return {name: stats.ccc() for name, stats in self._recordings.items()}

  def compute(self) -> dict[str, dict[str, float]]:
    """`{task: {ccc_concat, ccc_seq_mean, pcc, rmse}}` plus a `mean` row over the tasks.

    `ccc_seq_mean` skips recordings whose CCC is undefined (constant truth and prediction).
    """
    if not self._recordings:
      raise ValueError('no recordings were added to the metric')
    total = _Stats.zeros(len(self.tasks))
    for stats in self._recordings.values():
      total = total.merge(stats)
    per_recording = np.stack([s.ccc() for s in self._recordings.values()])
    with warnings.catch_warnings():  # an all-NaN column is reported as NaN, quietly
      warnings.simplefilter('ignore', RuntimeWarning)
      seq_mean = np.nanmean(per_recording, axis=0)
    columns = {'ccc_concat': total.ccc(), 'ccc_seq_mean': seq_mean, 'pcc': total.pcc(),
               'rmse': total.rmse()}
    table = {task: {name: float(values[k]) for name, values in columns.items()}
             for k, task in enumerate(self.tasks)}
    table['mean'] = {name: float(np.mean(values)) for name, values in columns.items()}
    return table

