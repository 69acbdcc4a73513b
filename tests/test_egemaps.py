"""Tests of ccc_jax.egemaps (eGeMAPSv02 low-level descriptors through openSMILE)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

opensmile = pytest.importorskip('opensmile')

from ccc_jax import egemaps  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

SR = 16000
LOUDNESS = egemaps.EGEMAPS_NAMES.index('Loudness_sma3')
F0 = egemaps.EGEMAPS_NAMES.index('F0semitoneFrom27.5Hz_sma3nz')


def speech_like(seconds: float, seed: int) -> np.ndarray:
  """0.3 s of near-silence, a harmonic tone with vibrato and a slow F0 glide up to 4.5 s (one
  long voiced stretch), a noise burst (a fricative) at 4.8-5.2 s, low noise throughout."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  f0 = 140 * (1 + 0.06 * np.sin(2 * np.pi * 5 * t) + 0.1 * np.sin(2 * np.pi * 0.4 * t))
  phase = 2 * np.pi * np.cumsum(f0) / SR
  voiced = sum(k ** -1.2 * np.sin(k * phase) for k in range(1, 25))
  envelope = np.clip(np.minimum(t - 0.3, 4.5 - t) / 0.03, 0, 1)
  noise = rng.standard_normal(len(t))
  fricative = (t > 4.8) & (t < 5.2)
  audio = 0.1 * envelope * voiced / np.abs(voiced).max() + 0.003 * noise + 0.03 * fricative * noise
  return audio.astype(np.float32)


@pytest.fixture(scope='module')
def recording():
  audio = speech_like(6.0, seed=0)
  return audio, egemaps.egemaps_lld(audio)


def test_names_match_opensmile():
  smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
  assert tuple(smile.feature_names) == egemaps.EGEMAPS_NAMES
  assert egemaps.NUM_EGEMAPS == 25 and egemaps.EGEMAPS_PER_FRAME == 4
  assert set(egemaps.LONG_WINDOW_NAMES) < set(egemaps.EGEMAPS_NAMES)


@pytest.mark.parametrize('num_samples, num_frames', [
    (1600, 3),       # 0.1 s: 2.5 label frames
    (640 * 7, 7),    # whole label frames
    (640 * 7 + 1, 8),  # one sample into a partial last label frame
    (21920, 35),     # 1.37 s
])
def test_shape_and_dtype(recording, num_samples, num_frames):
  audio = recording[0][SR // 2: SR // 2 + num_samples]
  lld = egemaps.egemaps_lld(audio)
  assert lld.shape == (4 * num_frames, 25) and lld.dtype == np.float32
  assert np.all(np.isfinite(lld))


def test_num_frames_trims_and_pads(recording):
  audio, whole = recording
  np.testing.assert_array_equal(egemaps.egemaps_lld(audio, num_frames=10), whole[:40])
  longer = egemaps.egemaps_lld(audio, num_frames=160)  # 150 label frames of audio, 10 of zeros
  assert longer.shape == (640, 25)
  np.testing.assert_array_equal(longer[:600], whole)
  assert np.all(longer[610:] == longer[-1]) and longer[-1, F0] == 0  # silence
  assert egemaps.egemaps_lld(audio, num_frames=0).shape == (0, 25)
  with pytest.raises(ValueError, match='1-D'):
    egemaps.egemaps_lld(audio.reshape(2, -1))


def test_tone_burst_raises_loudness_in_its_rows_only():
  # A 1 kHz tone from 1.00 s to 1.40 s: label frames 25-34, rows 100-139.
  t = np.arange(3 * SR) / SR
  audio = np.where((t >= 1.0) & (t < 1.4), 0.3 * np.sin(2 * np.pi * 1000 * t), 0.0)
  loudness = egemaps.egemaps_lld(audio)[:, LOUDNESS]
  # Row j reads the 20 ms frames centred on samples 160 j + 80 - 160, + 80, + 240 (3-row
  # average), i.e. samples [160 j - 240, 160 j + 400): a burst edge on a row boundary reaches
  # exactly 2 rows outside it, the second one weakly (under a quarter of the plateau), so above
  # half the plateau at most 1 row spreads past each edge.
  plateau = np.median(loudness[100:140])
  loud = np.flatnonzero(loudness > 0.5 * plateau)
  assert 99 <= loud[0] <= 100 and 139 <= loud[-1] <= 140
  assert np.all(loudness[100:140] > 0.5 * plateau)
  touched = np.flatnonzero(loudness != loudness[0])
  assert touched[0] == 98 and touched[-1] == 141
  assert loudness[98] < 0.3 * plateau and loudness[141] < 0.3 * plateau
  # Rows centred on the middle of their hop: the response is symmetric about the burst's
  # centre. Half a hop (80 samples) off would make row 99 about twice row 140 or half of it.
  np.testing.assert_allclose(loudness[98:142], loudness[98:142][::-1], rtol=0.02, atol=1e-3)


def test_voiced_burst_is_voiced_symmetrically_in_the_60ms_llds():
  # F0 comes from 60 ms frames: row j reads samples [160 j - 560, 160 j + 720).
  t = np.arange(3 * SR) / SR
  tone = sum(0.7 ** k * np.sin(2 * np.pi * 200 * k * t) for k in range(1, 10))
  audio = np.where((t >= 1.0) & (t < 1.4), 0.1 * tone, 0.0)
  voiced = np.flatnonzero(egemaps.egemaps_lld(audio)[:, F0] > 0)
  assert 96 <= voiced[0] <= 101 and 138 <= voiced[-1] <= 143
  assert voiced[0] - 100 == 139 - voiced[-1]
  assert len(voiced) == voiced[-1] - voiced[0] + 1


def test_agrees_with_opensmile_process_signal(recording):
  audio = recording[0][:2 * SR]
  ours = egemaps.egemaps_lld(audio)
  # The independent reference: openSMILE's own output for the audio after 80 zeros (half a
  # hop), so its 10 ms grid is ours; which of its rows is our row j follows from its `start`
  # times and each LLD's window (the documented 20 or 60 ms).
  smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
  reference = smile.process_signal(np.concatenate([np.zeros(80, np.float32), audio]), SR)
  start = reference.index.get_level_values('start').total_seconds().to_numpy()
  for column, name in enumerate(egemaps.EGEMAPS_NAMES):
    window = 0.060 if name in egemaps.LONG_WINDOW_NAMES else 0.020
    centre = start + window / 2 - 80 / SR  # seconds, in our audio's time
    row = np.round((centre - 0.005) / 0.010).astype(int)
    np.testing.assert_allclose(centre, 0.010 * row + 0.005, atol=1e-9)
    # Away from both ends (openSMILE's first row and its end of input).
    keep = np.arange(len(row))
    keep = keep[(row[keep] >= 2) & (keep < len(row) - 6)]
    assert len(keep) > 150
    np.testing.assert_allclose(ours[row[keep], column], reference[name].to_numpy()[keep],
                               rtol=1e-6, atol=1e-6, err_msg=name)


def test_span_equals_whole_recording(recording):
  audio, whole = recording
  num_frames = whole.shape[0] // 4  # 150
  # The middle span sits in a voiced stretch longer than the margin (jitter and shimmer need
  # the look-back to its start), the others at the ends of the recording.
  voiced = whole[:, F0] > 0
  assert voiced[4 * (60 - egemaps.MARGIN_FRAMES): 4 * 80].all()
  for begin, end in [(0, 20), (60, 80), (num_frames - 20, num_frames)]:
    np.testing.assert_array_equal(egemaps.egemaps_span(audio, begin, end),
                                  whole[4 * begin: 4 * end], err_msg=f'span {begin}-{end}')


def test_values_are_clipped_not_wrapped():
  t = np.arange(SR // 2) / SR
  loud = 1.5 * np.sin(2 * np.pi * 300 * t).astype(np.float32)
  np.testing.assert_array_equal(egemaps.egemaps_lld(loud),
                                egemaps.egemaps_lld(np.clip(loud, -1.0, 32767 / 32768)))


def test_import_is_light():
  code = ('import sys, ccc_jax, ccc_jax.egemaps; '
          'assert "opensmile" not in sys.modules, "opensmile imported eagerly"')
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)
