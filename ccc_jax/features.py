"""Frame-level features computed from raw signals, aligned to the 25 Hz label frames.

Owns the log-mel front end (`log_mel`, and `log_mel_span` for a stretch of a long recording)
and turning marker positions into per-label-frame body features (`mocap_features`). Dataset
preparation and inference both call these functions, so a model sees identical features for a
prepared window and for a new recording.

Alignment: label frame i covers [40 i, 40 i + 40) ms, i.e. 16 kHz samples [640 i, 640 i + 640).
Log-mel frame j is centred on sample 160 j + 80 (the middle of its 10 ms hop), so label frame i
owns log-mel frames 4 i .. 4 i + 3 and nothing outside it decides their centres.
"""

from __future__ import annotations

import functools
import math

import librosa
import numpy as np
import scipy.fft
import scipy.integrate

from ccc_jax.audio_io import SAMPLE_RATE
from ccc_jax.errors import DataError

LABEL_RATE = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // LABEL_RATE  # 640
LOGMEL_PER_FRAME = 4
NUM_MELS = 40
HOP_LENGTH = SAMPLE_RATE // (LABEL_RATE * LOGMEL_PER_FRAME)  # 160 samples = 10 ms
WIN_LENGTH = 400  # 25 ms
# Padding before sample 0 so that frame j (window [160 j - 120, 160 j + 280)) is centred on
# sample 160 j + 80.
_LEFT_PAD = WIN_LENGTH // 2 - HOP_LENGTH // 2
# Added to mel power before the log: about the level 16-bit quantisation noise reaches in one
# mel band, so digital silence maps to a finite floor (log(1e-10) = -23) instead of -inf.
LOG_FLOOR = 1e-10
# Two signals of one recording (audio and its labels or mocap) may differ this much in length;
# more means they are not the same recording.
LENGTH_TOLERANCE_S = 1.0



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
  log of power plus `LOG_FLOOR`. Samples outside the waveform count as zeros.

  Args:
    audio: 1-D float waveform at 16 kHz.
    num_frames: label frames to produce features for; defaults to enough to cover the audio.
  """
  audio = np.asarray(audio, dtype=np.float32)
  if audio.ndim != 1:
    raise ValueError(f'log_mel expects a 1-D waveform, got shape {audio.shape}')
  if num_frames is None:
    num_frames = num_label_frames(audio.shape[0])
  num_mel_frames = num_frames * LOGMEL_PER_FRAME
  padded = np.zeros(HOP_LENGTH * (num_mel_frames - 1) + WIN_LENGTH, dtype=np.float32)
  kept = audio[: padded.shape[0] - _LEFT_PAD]
  padded[_LEFT_PAD: _LEFT_PAD + kept.shape[0]] = kept
  frames = np.lib.stride_tricks.sliding_window_view(padded, WIN_LENGTH)[::HOP_LENGTH]
  window, mel_filters = _window_and_mel_filters()
  # scipy's FFT keeps float32 input in single precision: 15x faster than numpy's here.
  spectrum = scipy.fft.rfft(frames * window, axis=-1)
  power = spectrum.real ** 2 + spectrum.imag ** 2
  mel = power @ mel_filters.T
  return np.log(mel + LOG_FLOOR).astype(np.float32)


# Label frames of waveform on each side of a stretch of log-mel frames that decide their values:
# a log-mel frame's 25 ms window reaches at most WIN_LENGTH samples from its label frame.
_LOGMEL_MARGIN_FRAMES = math.ceil(WIN_LENGTH / SAMPLES_PER_FRAME)


def log_mel_span(waveform: np.ndarray, begin: int, end: int) -> np.ndarray:
  """`log_mel(waveform)` rows for label frames `[begin, end)`, from a slice of the waveform.

  Each log-mel frame depends only on the samples under its window (zeros outside the waveform),
  so computing it from the waveform plus a margin of `_LOGMEL_MARGIN_FRAMES` label frames on
  each side gives the same values as computing it over the whole recording.
  """
  lead = min(begin, _LOGMEL_MARGIN_FRAMES)
  first = begin - lead
  piece = waveform[first * SAMPLES_PER_FRAME: (end + _LOGMEL_MARGIN_FRAMES) * SAMPLES_PER_FRAME]
  return log_mel(piece, num_frames=end - first)[lead * LOGMEL_PER_FRAME:]


def fill_marker_gaps(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Fills NaN gaps in each marker coordinate by linear interpolation over time.

  Values before a marker's first and after its last sighting hold the nearest seen value.
  A marker never seen stays NaN here; `mocap_features` places it at the body centre.

  Returns:
    (filled positions float32 [frames, markers, 3], fraction of frames each marker was missing
    [markers]).
  """
  positions = np.asarray(positions, dtype=np.float32)
  seen = np.all(np.isfinite(positions), axis=-1)  # a marker is seen when all 3 coordinates are
  missing_fraction = 1.0 - seen.mean(axis=0)
  filled = positions.copy()
  frame_index = np.arange(positions.shape[0])
  for marker in range(positions.shape[1]):
    present = seen[:, marker]
    if present.all() or not present.any():
      continue
    for axis in range(3):
      filled[:, marker, axis] = np.interp(frame_index, frame_index[present],
                                          positions[present, marker, axis])
  filled[:, ~seen.any(axis=0)] = np.nan
  return filled, missing_fraction.astype(np.float32)


def mocap_feature_dim(num_markers: int) -> int:
  """Width of `mocap_features` output for `num_markers` markers."""
  return 6 * num_markers + 3


def mocap_features(positions: np.ndarray, rate: float,
                   num_frames: int | None = None) -> np.ndarray:
  """Body features per 25 Hz label frame from marker positions: float32 `[num_frames, 6M+3]`.

  Per label frame: each marker's position relative to the body centre (the mean of all markers;
  posture and expansion, independent of where the actor stands), the velocity of those relative
  positions (gesture energy), and the velocity of the body centre (locomotion), in position
  units and units per second. Gaps are filled first (`fill_marker_gaps`); a marker never seen
  sits at the body centre with zero velocity, so no NaN reaches a model. Each label frame gets
  the mean over its 40 ms, so high-rate mocap is not aliased and any rate gives the same
  features.

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
  filled, _ = fill_marker_gaps(positions)
  never_seen = np.isnan(filled[0, :, 0])
  if never_seen.all():
    raise DataError('mocap: no marker is seen in any frame')
  centre = filled[:, ~never_seen].mean(axis=1)  # [frames, 3]
  filled[:, never_seen] = centre[:, None, :]
  relative = filled - centre[:, None, :]
  num_mocap = positions.shape[0]
  if num_frames is None:
    num_frames = max(int(round(num_mocap / rate * LABEL_RATE)), 1)
  signals = np.concatenate([relative.reshape(num_mocap, -1), centre], axis=1)
  # Mean of each signal over each label frame's 40 ms (the exact integral of the linearly
  # interpolated samples): no aliasing from high-rate mocap, and the same result at any rate.
  mocap_times = np.arange(num_mocap) / rate
  boundaries = np.arange(num_frames + 1) / LABEL_RATE
  if boundaries[-1] > mocap_times[-1]:  # past the end of the mocap its last value holds
    mocap_times = np.append(mocap_times, boundaries[-1])
    signals = np.concatenate([signals, signals[-1:]], axis=0)
  if len(mocap_times) == 1:  # a single frame: constant
    mocap_times = np.append(mocap_times, mocap_times[0] + 1.0)
    signals = np.concatenate([signals, signals], axis=0)
  integral = scipy.integrate.cumulative_trapezoid(signals, mocap_times, axis=0, initial=0)
  # The integral up to each boundary, exact for the piecewise-linear signal (quadratic inside
  # a sample interval).
  left = np.clip(np.searchsorted(mocap_times, boundaries, side='right') - 1, 0,
                 len(mocap_times) - 2)
  into = (boundaries - mocap_times[left])[:, None]
  slope = (signals[left + 1] - signals[left]) / (mocap_times[left + 1] - mocap_times[left])[:, None]
  at_boundaries = integral[left] + signals[left] * into + 0.5 * slope * into ** 2
  sampled = np.diff(at_boundaries, axis=0) * LABEL_RATE
  if num_frames > 1:
    velocity = np.gradient(sampled, axis=0) * LABEL_RATE
  else:
    velocity = np.zeros_like(sampled)
  num_relative = relative.shape[1] * 3
  features = np.concatenate(
      [sampled[:, :num_relative], velocity[:, :num_relative], velocity[:, num_relative:]], axis=1)
  return features.astype(np.float32)
