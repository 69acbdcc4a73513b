"""Cutting recordings into fixed-length windows and putting windowed predictions back together.

Owns the one definition of where windows start, used by the dataset builders at prep time and by
evaluation and inference, so that a recording reassembled from its windows lines up frame for
frame with the source. Everything is counted in label frames (40 ms at 25 Hz); signals with more
than one value per label frame (audio samples, log-mel frames) are sliced with `per_frame`.
"""

from __future__ import annotations

import numpy as np

from ccc_jax.errors import ConfigError


def window_starts(num_frames: int, window: int, hop: int) -> np.ndarray:
  """Start frames of the windows that cover `num_frames` frames.

  Windows start every `hop` frames; the last one starts at or before the last frame, so every
  frame is covered and the final window may run past the end (its tail is padding, masked out).
  A recording shorter than one window gets a single window starting at 0.
  """
  if num_frames <= 0:
    raise ValueError(f'a recording needs at least one frame, got {num_frames}')
  if window <= 0 or hop <= 0:
    raise ValueError(f'window and hop must be positive, got window={window}, hop={hop}')
  if hop > window:
    raise ValueError(f'hop ({hop}) larger than window ({window}) would leave frames uncovered')
  last_start = max(num_frames - window, 0)
  starts = list(range(0, last_start + 1, hop))
  if starts[-1] + window < num_frames:  # the tail is not covered yet
    starts.append(starts[-1] + hop)
  return np.asarray(starts, dtype=np.int64)


def slice_window(signal: np.ndarray, start: int, window: int, per_frame: int = 1) -> np.ndarray:
  """Rows `[start * per_frame, (start + window) * per_frame)` of `signal`, zero-padded at the end."""
  begin, end = start * per_frame, (start + window) * per_frame
  piece = signal[begin:end]
  missing = end - begin - piece.shape[0]
  if missing > 0:
    pad = [(0, missing)] + [(0, 0)] * (signal.ndim - 1)
    piece = np.pad(piece, pad)
  return piece


def frame_mask(num_frames: int, start: int, window: int) -> np.ndarray:
  """1.0 for the window's frames that fall inside the recording, 0.0 past its end."""
  return (np.arange(start, start + window) < num_frames).astype(np.float32)


class OverlapAverage:
  """Windowed values put back into one trace, averaging where windows overlap, window by window.

  `add(start, value)` takes one window's `[T, ...]` values (frames past the recording's end are
  dropped); `result()` gives the `[num_frames, ...]` trace. Sums are float64, so the order in
  which windows arrive does not change the result beyond rounding. Holds one trace, never all
  the windows: a long recording is reassembled batch by batch in bounded memory.
  """

  def __init__(self, num_frames: int, trailing_shape: tuple[int, ...] = ()):
    self.num_frames = num_frames
    self.total = np.zeros((num_frames,) + tuple(trailing_shape), np.float64)
    self.count = np.zeros((num_frames,), np.int64)

  def add(self, start: int, value: np.ndarray, delay: int = 0) -> None:
    """Adds one window's values, its frame i at frame `start + i`.

    With `delay` d (`model.label_delay`), `value` is a model's output whose frame i predicts
    frame `start + i + d`: its first `T - d` frames are placed d frames later, and a window at the
    recording's start holds its first output over the d frames no output predicts.
    """
    start = int(start)
    if delay:
      if start == 0:
        self._add(0, np.repeat(value[:1], delay, axis=0))
      start, value = start + delay, value[:value.shape[0] - delay]
    self._add(start, value)

  def _add(self, start: int, value: np.ndarray) -> None:
    end = min(start + value.shape[0], self.num_frames)
    if end > start:
      self.total[start:end] += value[:end - start]
      self.count[start:end] += 1

  def result(self, dtype=np.float32) -> np.ndarray:
    """The averaged trace; an uncovered frame is an error, never a silent zero."""
    if np.any(self.count == 0):
      missing = np.flatnonzero(self.count == 0)
      raise ValueError(f'frames {missing[:5].tolist()}... of {self.num_frames} are covered by '
                       'no window')
    count = self.count.reshape((self.num_frames,) + (1,) * (self.total.ndim - 1))
    return (self.total / count).astype(dtype)


def check_delay(delay: int, window: int, hop: int) -> None:
  """A label delay leaves every frame predicted by some window only if it is at most the
  windows' overlap (`window - hop`)."""
  if delay > window - hop:
    raise ConfigError(f'a label delay of {delay} frames exceeds the overlap of the windows '
                     f'({window} frames every {hop}: {window - hop}), so some frames would be '
                     'predicted by no window; lower model.label_delay or prepare the dataset '
                     'with a smaller hop')


def reassemble(starts: np.ndarray, values: np.ndarray, num_frames: int) -> np.ndarray:
  """Averages overlapping windowed values `[N, T, ...]` back into one `[num_frames, ...]` trace.

  Frames past the end of the recording are dropped. Every frame must be covered by at least one
  window (as `window_starts` guarantees); an uncovered frame is an error, never a silent zero.
  """
  values = np.asarray(values)
  starts = np.asarray(starts)
  if values.shape[0] != starts.shape[0]:
    raise ValueError(f'{starts.shape[0]} starts but {values.shape[0]} windows')
  average = OverlapAverage(num_frames, values.shape[2:])
  for start, value in zip(starts, values):
    average.add(start, value)
  return average.result(values.dtype)
