"""Reading audio files into the one waveform format ccc-jax uses: 16 kHz mono float32.

Dataset preparation and inference on new recordings both read audio through `load_audio` (a
file) or `waveform_16k` (an array), so a recording is resampled and mixed down the same way at
training and at inference time. The 16-bit form prepared datasets store the waveform in is
here too (`to_pcm16`, `from_pcm16`), with `as_stored`, the waveform as the model sees it.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import librosa
import numpy as np
import soundfile

from ccc_jax.errors import DataError

SAMPLE_RATE = 16000
# 16-bit PCM full scale, as soundfile (and `pcm_to_float`) scales it: sample k is k / 32768.
# Prepared datasets store the 16 kHz waveform as int16 on this scale (dataset version 1.3.0).
PCM16_FULL_SCALE = 32768


def to_pcm16(waveform: np.ndarray) -> tuple[np.ndarray, int]:
  """A float waveform as prepared datasets store it: int16 on the `PCM16_FULL_SCALE` scale,
  rounded to nearest and clipped to [-32768, 32767]; returns it and the number of clipped
  samples. `from_pcm16` is the inverse, exact for samples on the 16-bit grid (a 16-bit WAV
  round-trips unchanged); otherwise the error is at most half a step, 1 / 65536."""
  scaled = np.rint(np.asarray(waveform, np.float32) * np.float32(PCM16_FULL_SCALE))
  clipped = int(np.count_nonzero((scaled < -PCM16_FULL_SCALE) | (scaled > PCM16_FULL_SCALE - 1)))
  return np.clip(scaled, -PCM16_FULL_SCALE, PCM16_FULL_SCALE - 1).astype(np.int16), clipped


def from_pcm16(pcm):
  """Stored int16 audio as the float32 waveform. Exact: sample k becomes k / 32768, as soundfile
  reads a 16-bit WAV. A pure function of its argument, for numpy or jax arrays (on a device too).
  """
  return pcm.astype(np.float32) * np.float32(1.0 / PCM16_FULL_SCALE)


def as_stored(waveform: np.ndarray) -> np.ndarray:
  """The waveform on the 16-bit grid, as a prepared dataset holds it and so as the model saw it
  in training: inference feeds the raw-audio branch this, so a recording predicted from its
  file equals the same recording predicted from its prepared windows. (The extracted features
  and the recording's statistics are computed from the float waveform on both sides.)"""
  return from_pcm16(to_pcm16(waveform)[0])


# soxr's high-quality mode: as accurate as librosa's default and fast enough that resampling
# 5 minutes of 44.1 kHz stereo takes a fraction of a second.
_RESAMPLE_TYPE = 'soxr_hq'


class AudioInfo(NamedTuple):
  """What a WAV header says, read without decoding the samples."""
  sample_rate: int
  num_samples: int
  channels: int

  @property
  def duration(self) -> float:
    """Length in seconds."""
    return self.num_samples / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
  """Reads the header of an audio file; raises DataError if it is missing, unreadable or empty."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise DataError(f'{path}: is a folder; expected an audio file')
  if not os.path.isfile(path):
    raise DataError(f'{path}: audio file not found')
  try:
    info = soundfile.info(path)
  except (soundfile.LibsndfileError, RuntimeError) as error:
    raise DataError(f'{path}: not a readable audio file ({error})') from error
  if info.frames <= 0:
    raise DataError(f'{path}: audio file contains no samples')
  declared = _wav_declared_frames(path)
  if declared is not None and declared > info.frames:
    raise DataError(f'{path}: audio data shorter than its header says ({info.frames} of '
                    f'{declared} samples, {info.frames / info.samplerate:.2f} of '
                    f'{declared / info.samplerate:.2f} s): the file is truncated')
  return AudioInfo(sample_rate=int(info.samplerate), num_samples=int(info.frames),
                   channels=int(info.channels))


def _wav_declared_frames(path: str) -> int | None:
  """Sample frames a RIFF/WAVE header declares in its `data` chunk (None: not a plain WAV).

  libsndfile reports the frames actually present, so a WAV cut short (a failed copy) would
  otherwise pass as a shorter recording.
  """
  with open(path, 'rb') as f:
    if f.read(4) != b'RIFF' or (f.read(4) and f.read(4) != b'WAVE'):
      return None
    block_align = None
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return None
      name, size = chunk[:4], struct.unpack('<I', chunk[4:])[0]
      if name == b'fmt ':
        block_align = struct.unpack('<H', f.read(16)[12:14])[0]
        f.seek(size - 16 + (size & 1), os.SEEK_CUR)
      elif name == b'data':
        # 0 and 0xFFFFFFFF mark streams written without a known length.
        if not block_align or size in (0, 0xFFFFFFFF):
          return None
        return size // block_align
      else:
        f.seek(size + (size & 1), os.SEEK_CUR)


def load_audio(path: str | os.PathLike) -> np.ndarray:
  """Reads any audio file soundfile can decode as a 16 kHz mono float32 waveform.

  Channels are averaged and the signal is resampled with librosa (soxr) when the file's rate
  is not 16 kHz.

  Raises:
    DataError: the file is missing, cannot be decoded, holds no samples, or holds NaN/inf
      samples (possible in float WAV files); the message names the file.
  """
  path = os.fspath(path)
  audio_info(path)  # a clear error for missing, corrupt and empty files before decoding
  try:
    samples, sample_rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError) as error:
    raise DataError(f'{path}: audio samples cannot be decoded ({error})') from error
  if samples.shape[0] == 0:
    raise DataError(f'{path}: audio file contains no samples')
  if not np.all(np.isfinite(samples)):
    bad = int(np.flatnonzero(~np.isfinite(samples).all(axis=1))[0])
    raise DataError(f'{path}: audio contains NaN or infinite samples (first at sample {bad})')
  return to_16k_mono(samples, sample_rate)


def to_16k_mono(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Float samples `[n]` or `[n, channels]` at `sample_rate` as a 16 kHz mono float32 waveform.

  Channels are averaged; resampling uses librosa with soxr's high-quality mode.
  """
  samples = mix_down(samples)
  if sample_rate != SAMPLE_RATE:
    samples = librosa.resample(samples, orig_sr=int(sample_rate), target_sr=SAMPLE_RATE,
                               res_type=_RESAMPLE_TYPE)
  return np.ascontiguousarray(samples, dtype=np.float32)


def mix_down(samples: np.ndarray) -> np.ndarray:
  """`[n]` or `[n, channels]` as float32 `[n]`: the mean of the channels."""
  samples = np.asarray(samples, dtype=np.float32)
  if samples.ndim == 2:
    samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
  return samples


def pcm_to_float(audio) -> np.ndarray:
  """Samples as float32: floats as they are (full scale 1.0), integer PCM scaled to [-1, 1)
  as soundfile scales it."""
  audio = np.asarray(audio)
  if np.issubdtype(audio.dtype, np.integer):
    audio = audio / float(np.iinfo(audio.dtype).max + 1)
  return np.asarray(audio, dtype=np.float32)


def waveform_16k(audio, sample_rate: int) -> np.ndarray:
  """Any waveform array as the 16 kHz mono float32 the models take, exactly as `load_audio`.

  Args:
    audio: `[samples]` or `[samples, channels]` (soundfile's layout). Floats are taken as they
      are (full scale 1.0); integer PCM is scaled to [-1, 1) as soundfile scales it.
    sample_rate: samples per second of `audio`.

  Raises:
    DataError: empty audio, NaN or infinite samples, or a layout that looks like
      `[channels, samples]`.
  """
  audio = pcm_to_float(audio)
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
  return to_16k_mono(audio, int(sample_rate))
