"""Frame-level features computed from raw signals, aligned to the 25 Hz label frames.

Owns the log-mel front end (`log_mel`, and `log_mel_span` for a stretch of a long recording)
and turning marker positions into per-label-frame body features (`mocap_features`, computed by
`MocapFeatureStream`, which also serves live input). Dataset preparation, offline inference and
streaming all call these, so a model sees identical features for a prepared window, for a new
recording and for a live one.

Alignment: label frame i covers [40 i, 40 i + 40) ms, i.e. 16 kHz samples [640 i, 640 i + 640).
Every feature here is causal: the features of label frame i depend only on the signals up to the
end of that frame, so a live stream can emit frame i as soon as its 40 ms have been received
(for mocap, once the first mocap sample at or after its end has arrived).

- Log-mel frame j's 25 ms window is samples [160 j - 240, 160 j + 160): it ends where its 10 ms
  hop [160 j, 160 j + 160) ends. Label frame i owns log-mel frames 4 i .. 4 i + 3, the last of
  which ends exactly at sample 640 (i + 1); each reaches 240 samples (15 ms) back.
- Mocap features hold each marker's last seen position through gaps, place a marker not seen
  yet at the body centre, average each label frame's 40 ms, and take velocities as backward
  differences of those averages (`MocapFeatureStream`).
"""

from __future__ import annotations

from collections.abc import Iterable
import functools

import librosa
import numpy as np
import scipy.fft

from ccc_jax import metrics
from ccc_jax.audio_io import SAMPLE_RATE
from ccc_jax.errors import DataError

LABEL_RATE = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // LABEL_RATE  # 640
LOGMEL_PER_FRAME = 4
NUM_MELS = 40
HOP_LENGTH = SAMPLE_RATE // (LABEL_RATE * LOGMEL_PER_FRAME)  # 160 samples = 10 ms
WIN_LENGTH = 400  # 25 ms
# Samples before its hop that a log-mel frame's window reads: frame j's window
# [160 j - 240, 160 j + 160) ends with its hop, so no frame hears anything after its hop.
LOGMEL_LEFT_CONTEXT = WIN_LENGTH - HOP_LENGTH  # 240
# Added to mel power before the log: about the level 16-bit quantisation noise reaches in one
# mel band, so digital silence maps to a finite floor (log(1e-10) = -23) instead of -inf.
LOG_FLOOR = 1e-10
# Two signals of one recording (audio and its labels or mocap) may differ this much in length;
# more means they are not the same recording.
LENGTH_TOLERANCE_S = 1.0
# Standard deviations below this are stored as 1: a constant feature (e.g. a marker never seen
# in training, or digital silence) is then only centred by normalisation, never divided by ~0.
MIN_STD = 1e-6
# Mocap frames `mocap_features` hands `MocapFeatureStream` at a time: bounds its float64 working
# copies (9 minutes at 120 Hz) whatever the take's length; the result does not depend on it.
_MOCAP_BLOCK = 65536


def recording_stats(inputs: dict[str, np.ndarray | Iterable[np.ndarray]]
                    ) -> dict[str, dict[str, list | float]]:
  """Per input (`audio` `[samples]`, `logmel` `[rows, 40]`, ...), the mean and standard
  deviation over one whole recording, as `normalise` takes them (`model.recording_norm`).
  An input is its whole array or an iterable of consecutive blocks of it (rows), for a
  recording whose features are computed a block at a time.

  The builders store these for every recording of every split and inference computes them for a
  new one, from the same arrays: the 16 kHz float waveform padded or cut to
  `640 * num_frames` samples and `log_mel(waveform, num_frames)`.
  """
  stats = {}
  for name, values in inputs.items():
    moments = metrics.RunningMoments()
    for block in ((values,) if isinstance(values, np.ndarray) else values):
      moments.add(block)
    stats[name] = moments.to_json(min_std=MIN_STD)
  return stats


@functools.cache
def _window_and_mel_filters() -> tuple[np.ndarray, np.ndarray]:
  """The Hann window and the mel filter bank, made on first use: librosa's filters module loads
  scipy.signal (1.5 s), which the eGeMAPS worker processes of dataset preparation never need."""
  window = librosa.filters.get_window('hann', WIN_LENGTH, fftbins=True).astype(np.float32)
  return window, librosa.filters.mel(sr=SAMPLE_RATE, n_fft=WIN_LENGTH, n_mels=NUM_MELS)


def num_label_frames(num_samples: int) -> int:
  """Label frames needed to cover `num_samples` 16 kHz samples (a partial last frame counts)."""
  return -(-num_samples // SAMPLES_PER_FRAME)


def log_mel(audio: np.ndarray, num_frames: int | None = None) -> np.ndarray:
  """Log mel power spectrogram of a 16 kHz waveform: float32 `[4 * num_frames, 40]`.

  25 ms Hann window, 10 ms hop, 40 mel bands (librosa's Slaney mel scale, 0-8 kHz), natural
  log of power plus `LOG_FLOOR`. Frame j's window is samples [160 j - 240, 160 j + 160) (causal:
  it ends with its hop, see the module docstring); samples outside the waveform count as zeros.

  Args:
    audio: 1-D float waveform at 16 kHz.
    num_frames: label frames to produce features for; defaults to enough to cover the audio.
      Samples after `640 * num_frames` are not read.
  """
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 1:
    raise ValueError(f'log_mel expects a 1-D waveform, got shape {audio.shape}')
  if num_frames is None:
    num_frames = num_label_frames(audio.shape[0])
  num_mel_frames = num_frames * LOGMEL_PER_FRAME
  # Padded sample p is waveform sample p - 240, so frame j's window starts at padded 160 j.
  padded = np.zeros(HOP_LENGTH * (num_mel_frames - 1) + WIN_LENGTH, dtype=np.float32)
  kept = audio[: padded.shape[0] - LOGMEL_LEFT_CONTEXT]
  padded[LOGMEL_LEFT_CONTEXT: LOGMEL_LEFT_CONTEXT + kept.shape[0]] = kept
  frames = np.lib.stride_tricks.sliding_window_view(padded, WIN_LENGTH)[::HOP_LENGTH]
  window, mel_filters = _window_and_mel_filters()
  # scipy's FFT keeps float32 input in single precision: 15x faster than numpy's here.
  spectrum = scipy.fft.rfft(frames * window, axis=-1)
  power = spectrum.real ** 2 + spectrum.imag ** 2
  mel = power @ mel_filters.T
  return np.log(mel + LOG_FLOOR).astype(np.float32)


def log_mel_span(waveform: np.ndarray, begin: int, end: int) -> np.ndarray:
  """`log_mel(waveform)` rows for label frames `[begin, end)`, from a slice of the waveform.

  Reads only `waveform[max(640 begin - 240, 0): 640 end]`: the rows' windows reach
  `LOGMEL_LEFT_CONTEXT` = 240 samples before label frame `begin` and nothing after label frame
  `end - 1`. So a caller may pass any waveform that is right over that range: the whole
  recording, or, live, a buffer holding at least 240 samples before label frame `begin` (or
  starting at sample 0) up to the end of label frame `end - 1`; samples missing past the end
  count as zeros, as in `log_mel`. The rows equal the whole recording's to float32 rounding
  (about 1e-6: the FFT's vectorisation depends on how many frames it is given), not bit for bit.
  """
  if begin == 0:
    return log_mel(waveform[:end * SAMPLES_PER_FRAME], num_frames=end)
  # One label frame before `begin`, of which only the last 240 samples are read (the rest is
  # zeros here): its 4 rows are computed and dropped, so every kept row is computed exactly as
  # `log_mel` of the whole waveform computes it.
  context = waveform[begin * SAMPLES_PER_FRAME - LOGMEL_LEFT_CONTEXT: end * SAMPLES_PER_FRAME]
  piece = np.concatenate([np.zeros(SAMPLES_PER_FRAME - LOGMEL_LEFT_CONTEXT, np.float32),
                          np.asarray(context, np.float32)])
  return log_mel(piece, num_frames=end - begin + 1)[LOGMEL_PER_FRAME:]


def _hold_last_seen(positions: np.ndarray, last_seen: np.ndarray,
                    seen_before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each marker's last seen position at each mocap frame of a chunk (causal gap filling).

  Args:
    positions: `[frames, markers, 3]`; a marker is seen in a frame when all 3 coordinates are
      finite.
    last_seen: `[markers, 3]` positions last seen before the chunk (any value where not seen).
    seen_before: `[markers]` whether each marker was seen before the chunk.

  Returns:
    (held float64 `[frames, markers, 3]`, NaN where the marker has not been seen yet;
    seen so far `[frames, markers]`, at or before each frame).
  """
  num_rows, num_markers = positions.shape[:2]
  seen = np.all(np.isfinite(positions), axis=-1)
  # Row of each marker's last sighting in the chunk, at or before each row (-1: none yet).
  last_row = np.maximum.accumulate(np.where(seen, np.arange(num_rows)[:, None], -1), axis=0)
  in_chunk = last_row >= 0
  held = np.where(in_chunk[..., None],
                  positions[np.maximum(last_row, 0), np.arange(num_markers)].astype(np.float64),
                  np.where(seen_before[:, None], last_seen, np.nan))
  return held, in_chunk | seen_before


def fill_marker_gaps(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Fills NaN gaps in each marker's positions causally, as `mocap_features` does.

  A marker not seen in a frame holds its last seen position; before its first sighting it stays
  NaN (`mocap_features` places it at the body centre until then).

  Returns:
    (filled positions float32 [frames, markers, 3], fraction of frames each marker was missing
    [markers]).
  """
  positions = np.asarray(positions, dtype=np.float32)
  num_markers = positions.shape[1]
  seen = np.all(np.isfinite(positions), axis=-1)  # a marker is seen when all 3 coordinates are
  missing_fraction = 1.0 - seen.mean(axis=0) if len(seen) else np.ones(num_markers)
  filled, _ = _hold_last_seen(positions, np.zeros((num_markers, 3)), np.zeros(num_markers, bool))
  return filled.astype(np.float32), missing_fraction.astype(np.float32)


def mocap_feature_dim(num_markers: int) -> int:
  """Width of `mocap_features` output for `num_markers` markers."""
  return 6 * num_markers + 3


class MocapFeatureStream:
  """Causal body features per 25 Hz label frame from marker positions arriving in chunks.

  The one definition of the mocap features (`mocap_features` pushes a whole take through it).
  Per label frame, float32 `[6 M + 3]`: each marker's position relative to the body centre (3 M;
  posture and expansion, independent of where the actor stands), the velocity of those relative
  positions (3 M; gesture energy), and the velocity of the body centre (3; locomotion), in
  position units and units per second. Mocap frame k is at time k / rate, label frame i covers
  [i / 25, (i + 1) / 25) s.

  - Gaps: a marker not seen in a mocap frame (any coordinate NaN) holds its last seen position.
    Before its first sighting it sits at the body centre: relative position 0.
  - Body centre at mocap frame k: the mean of the held positions of the markers seen at or
    before k.
  - Per label frame, the exact mean over its 40 ms of the linearly interpolated signals
    (relative positions and centre), so high-rate mocap is not aliased and any rate gives the
    same features. This needs the first mocap frame at or after the label frame's end, whose
    arrival makes the label frame final. Past the end of the mocap its last value holds.
  - Velocity: backward difference of the label frames' means, (s_i - s_(i-1)) * 25; 0 for
    frame 0. The centre's velocity is also 0 while the centre is not yet defined over frames
    i - 1 and i (no marker seen yet at frame i - 1's start): it is no velocity, only the first
    sighting.

  State is O(markers): held positions, the last mocap frame's signals, the integral since the
  open label frame's start and the previous label frame's means. Frame membership is decided on
  global frame indices, so every chunking of a take gives the same features (to float64
  rounding).
  """

  def __init__(self, rate: float, num_markers: int):
    """Starts a take at time 0.

    Args:
      rate: mocap frames per second.
      num_markers: markers per mocap frame.
    """
    if not rate > 0:
      raise ValueError(f'mocap rate must be positive, got {rate}')
    if num_markers < 1:
      raise ValueError(f'need at least one marker, got {num_markers}')
    self.rate = float(rate)
    self.num_markers = num_markers
    self.num_mocap_frames = 0  # pushed so far: the global index of the next mocap frame
    self.num_emitted = 0  # label frames returned so far
    self._finished = False
    self._last_seen = np.zeros((num_markers, 3))
    self._seen = np.zeros(num_markers, bool)
    self._first_valid = None  # index of the first mocap frame with any marker seen
    self._last_signals = None  # [3 M + 3] relative positions and centre of the last mocap frame
    self._open_integral = None  # integral of the signals from the open label frame's start
    self._previous_means = None  # [3 M + 3] means of the last emitted label frame

  @property
  def seen_any(self) -> bool:
    """Whether any marker has been seen so far."""
    return self._first_valid is not None

  def push(self, positions: np.ndarray) -> np.ndarray:
    """Takes the next mocap frames; returns the label frames that became final.

    Args:
      positions: `[frames, markers, 3]` (any number of frames, 0 included), continuing the
        take; NaN for a marker not seen.

    Returns:
      float32 `[n, 6 M + 3]`: label frames `num_emitted` .. `num_emitted + n - 1` (as before
      the call), those whose end the newest mocap frame has reached.
    """
    if self._finished:
      raise ValueError('MocapFeatureStream: push after finish')
    # float32 like the prepared data, so a live take gives the same features as the offline one.
    positions = np.asarray(positions, dtype=np.float32)
    if positions.ndim != 3 or positions.shape[1:] != (self.num_markers, 3):
      raise ValueError(f'positions must be [frames, {self.num_markers}, 3], got shape '
                       f'{positions.shape}')
    num_rows = positions.shape[0]
    if num_rows == 0:
      return self._empty()
    first = self.num_mocap_frames
    held, seen = _hold_last_seen(positions, self._last_seen, self._seen)
    count = seen.sum(axis=1)  # [rows]
    # With no marker seen yet the centre is undefined: 0 stands in, and the velocity rule keeps
    # it out of the features.
    centre = np.where(seen[..., None], held, 0.0).sum(axis=1) / np.maximum(count, 1)[:, None]
    relative = np.where(seen[..., None], held - centre[:, None, :], 0.0)
    signals = np.concatenate([relative.reshape(num_rows, -1), centre], axis=1)
    if self._first_valid is None and count[-1] > 0:
      self._first_valid = first + int(np.argmax(count > 0))
    self._last_seen = np.where(seen[-1][:, None], held[-1], 0.0)
    self._seen = seen[-1]

    indices = np.arange(first, first + num_rows)
    if self._last_signals is None:  # the take's first frame, at time 0 = label frame 0's start
      open_integral = 0.0
    else:  # continue from the previous chunk's last frame
      indices = np.concatenate([[first - 1], indices])
      signals = np.concatenate([self._last_signals[None], signals])
      open_integral = self._open_integral
    times = indices / self.rate
    # Integral of the linearly interpolated signals from the open label frame's start to each
    # mocap frame (trapezoids: exact for the piecewise-linear signal).
    steps = np.diff(times)[:, None]
    integral = open_integral + np.concatenate(
        [np.zeros((1, signals.shape[1])),
         np.cumsum(0.5 * (signals[1:] + signals[:-1]) * steps, axis=0)])
    # Label frame boundaries the newest mocap frame has reached: those frames are final.
    boundaries = self._boundaries_until(times[-1])
    if len(boundaries):
      left = np.searchsorted(times, boundaries, side='right') - 1
      into = (boundaries - times[left])[:, None]
      right = np.minimum(left + 1, len(times) - 1)
      # A boundary on the newest frame has into = 0 there, and no slope is needed.
      span = np.where(right > left, times[right] - times[left], 1.0)[:, None]
      slope = (signals[right] - signals[left]) / span
      # Inside a mocap interval the integral is quadratic in time.
      at_boundaries = integral[left] + signals[left] * into + 0.5 * slope * into ** 2
      result = self._emit(at_boundaries)
      open_integral = integral[-1] - at_boundaries[-1]
    else:
      result = self._empty()
      open_integral = integral[-1]
    self._open_integral = open_integral
    self._last_signals = signals[-1]
    self.num_mocap_frames = first + num_rows
    return result

  def finish(self, num_frames: int) -> np.ndarray:
    """Ends the take: returns label frames `num_emitted` .. `num_frames - 1`.

    Past the last mocap frame its values hold. Call once, after the last `push`.

    Args:
      num_frames: label frames the take has in all.

    Returns:
      float32 `[num_frames - num_emitted, 6 M + 3]`; all zeros where no mocap frame was pushed.

    Raises:
      ValueError: `num_frames` is fewer than the frames already returned, or called twice.
    """
    if self._finished:
      raise ValueError('MocapFeatureStream: finish called twice')
    if num_frames < self.num_emitted:
      raise ValueError(f'MocapFeatureStream: {self.num_emitted} label frames already returned, '
                       f'finish asked for {num_frames}')
    self._finished = True
    remaining = num_frames - self.num_emitted
    if remaining == 0:
      return self._empty()
    if self._last_signals is None:
      return np.zeros((remaining, mocap_feature_dim(self.num_markers)), np.float32)
    last_time = (self.num_mocap_frames - 1) / self.rate
    # Every boundary not yet reached lies after the last mocap frame: constant from there on.
    boundaries = np.arange(self.num_emitted + 1, num_frames + 1) / LABEL_RATE
    at_boundaries = (self._open_integral
                     + self._last_signals * (boundaries - last_time)[:, None])
    return self._emit(at_boundaries)

  def _boundaries_until(self, newest_time: float) -> np.ndarray:
    """Times of label frame ends after the open frame's start, up to `newest_time`."""
    # floor() of a product can be one off from comparing the two times; the times decide.
    last = int(np.floor(newest_time * LABEL_RATE))
    while (last + 1) / LABEL_RATE <= newest_time:
      last += 1
    while last > self.num_emitted and last / LABEL_RATE > newest_time:
      last -= 1
    return np.arange(self.num_emitted + 1, last + 1) / LABEL_RATE

  def _emit(self, at_boundaries: np.ndarray) -> np.ndarray:
    """Features of the label frames ending at the boundaries of `at_boundaries`, given the
    integral from the open frame's start to each; advances the emitted count."""
    integrals = np.concatenate([at_boundaries[:1], np.diff(at_boundaries, axis=0)])
    means = integrals * LABEL_RATE
    frames = np.arange(self.num_emitted, self.num_emitted + len(means))
    if self._previous_means is None:
      previous = np.concatenate([means[:1], means[:-1]])  # frame 0: velocity 0
    else:
      previous = np.concatenate([self._previous_means[None], means[:-1]])
    velocity = (means - previous) * LABEL_RATE
    num_relative = 3 * self.num_markers
    # The centre is defined over frames i - 1 and i once a marker was seen by frame i - 1's
    # start (the first mocap frame of its interpolation).
    centre_defined = np.zeros(len(frames), bool)
    if self._first_valid is not None:
      centre_defined = (frames >= 1) & (self._first_valid / self.rate <= (frames - 1) / LABEL_RATE)
    velocity[:, num_relative:] *= centre_defined[:, None]
    self._previous_means = means[-1]
    self.num_emitted += len(means)
    return np.concatenate([means[:, :num_relative], velocity], axis=1).astype(np.float32)

  def _empty(self) -> np.ndarray:
    return np.zeros((0, mocap_feature_dim(self.num_markers)), np.float32)


def mocap_features(positions: np.ndarray, rate: float,
                   num_frames: int | None = None) -> np.ndarray:
  """Body features per 25 Hz label frame of a whole take: float32 `[num_frames, 6M+3]`.

  `MocapFeatureStream` defines them (causal; its docstring says how); this pushes the whole take
  through it and finishes it, so offline and live features are the same. No NaN reaches a model.

  Args:
    positions: `[frames, markers, 3]`, frame k at time k / rate; NaN for unseen markers.
    rate: mocap frames per second.
    num_frames: label frames to produce; defaults to the mocap's duration in label frames.
      Frames past the end of the mocap hold its last value.

  Raises:
    DataError: no marker is seen in any frame.
  """
  positions = np.asarray(positions, dtype=np.float32)
  if positions.ndim != 3 or positions.shape[-1] != 3:
    raise ValueError(f'positions must be [frames, markers, 3], got shape {positions.shape}')
  if rate <= 0:
    raise ValueError(f'mocap rate must be positive, got {rate}')
  num_mocap = positions.shape[0]
  if num_frames is None:
    num_frames = max(int(round(num_mocap / rate * LABEL_RATE)), 1)
  stream = MocapFeatureStream(rate, positions.shape[1])
  parts = [stream.push(positions[start: start + _MOCAP_BLOCK])
           for start in range(0, num_mocap, _MOCAP_BLOCK)]
  if not stream.seen_any:
    raise DataError('mocap: no marker is seen in any frame')
  parts.append(stream.finish(max(num_frames, stream.num_emitted)))
  return np.concatenate(parts)[:num_frames]
