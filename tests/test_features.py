"""Tests of ccc_jax.features (log-mel, mocap CSV, mocap features) and ccc_jax.audio_io."""

import os

import librosa
import numpy as np
import pytest
import soundfile

from ccc_jax import audio_io
from ccc_jax import features
from ccc_jax import formats
from ccc_jax.errors import DataError
from tests import fixtures


# ------------------------------------------------------------------------------------------
# log_mel


def test_log_mel_matches_librosa_melspectrogram():
  audio = fixtures.example_audio(1.37, 16000, 1, seed=0)[:, 0].astype(np.float32)
  ours = features.log_mel(audio)
  num_frames = -(-len(audio) // 640)
  assert ours.shape == (4 * num_frames, 40) and ours.dtype == np.float32
  # Frame j centred on sample 160 j + 80: librosa without centring on audio shifted by 120.
  padded = np.concatenate([np.zeros(120, np.float32), audio, np.zeros(800, np.float32)])
  reference = librosa.feature.melspectrogram(
      y=padded, sr=16000, n_fft=400, hop_length=160, win_length=400, window='hann',
      center=False, power=2.0, n_mels=40).T[:4 * num_frames]
  np.testing.assert_allclose(ours, np.log(reference + features.LOG_FLOOR), atol=2e-3)


def test_log_mel_frames_of_a_label_frame_are_4i_to_4i_plus_3():
  label_frame = 7
  audio = np.zeros(640 * 20, np.float32)
  burst = slice(640 * label_frame, 640 * (label_frame + 1))
  audio[burst] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(640) / 16000)
  energy = features.log_mel(audio).max(axis=1)
  loudest = np.argsort(energy)[-4:]
  assert sorted(loudest.tolist()) == [4 * label_frame + k for k in range(4)]
  # Windows reach 120 samples back and 280 forward: frames further away hear only silence.
  silent = np.r_[:4 * label_frame - 3, 4 * label_frame + 6:len(energy)]
  np.testing.assert_allclose(energy[silent], np.log(features.LOG_FLOOR), rtol=1e-6)


def test_log_mel_num_frames_trims_and_pads():
  audio = fixtures.example_audio(0.5, 16000, 1, seed=1)[:, 0]
  full = features.log_mel(audio)  # 13 label frames (8000 samples = 12.5 frames)
  assert full.shape == (52, 40)
  # Equal up to float32 rounding: the FFT's vectorisation depends on how many frames it gets.
  np.testing.assert_allclose(features.log_mel(audio, num_frames=5), full[:20], atol=1e-5)
  longer = features.log_mel(audio, num_frames=16)
  np.testing.assert_allclose(longer[:50], full[:50], atol=1e-5)
  assert np.all(longer[-8:] == np.float32(np.log(features.LOG_FLOOR)))


# ------------------------------------------------------------------------------------------
# read_mocap_csv, fill_marker_gaps, mocap_features


def test_read_mocap_csv_round_trip_with_missing_values(tmp_path):
  rng = np.random.default_rng(0)
  positions = rng.uniform(-900, 900, (30, len(fixtures.MOCAP_MARKERS), 3)).round(3)
  positions[3:6, 2] = np.nan
  positions[9, 4, 1] = np.nan
  path = str(tmp_path / 'mocap.csv')
  fixtures.write_mocap_csv(path, positions, rate=120.0)
  with open(path) as f:
    text = f.read()
  assert ',,' in text and 'NaN' in text  # both spellings of "not seen" are exercised
  take = formats.read_mocap_csv(path)
  assert take.markers == fixtures.MOCAP_MARKERS
  assert take.rate == pytest.approx(120.0, rel=1e-4)
  np.testing.assert_allclose(take.positions, positions, atol=1e-3)
  assert np.array_equal(np.isnan(take.positions), np.isnan(positions))


def test_read_mocap_csv_puts_dropped_frames_back_as_nan(tmp_path):
  positions = np.arange(10 * 2 * 3, dtype=float).reshape(10, 2, 3)
  path = tmp_path / 'mocap.csv'
  lines = ['time,A_x,A_y,A_z,B_x,B_y,B_z']
  for k in [0, 1, 2, 5, 6, 7, 8, 9]:  # frames 3 and 4 dropped
    lines.append(','.join([f'{k / 50:.4f}'] + [f'{v}' for v in positions[k].ravel()]))
  path.write_text('\n'.join(lines) + '\n')
  take = formats.read_mocap_csv(path)
  assert take.positions.shape == (10, 2, 3) and take.rate == pytest.approx(50.0)
  assert np.all(np.isnan(take.positions[3:5]))
  np.testing.assert_array_equal(take.positions[[0, 1, 2, 5, 9]], positions[[0, 1, 2, 5, 9]])


def test_read_mocap_csv_long_file_with_rounded_timestamps(tmp_path):
  # 5 min at 60 Hz, times written as 0.01667, 0.03333, ...: the median step is off by 2e-4 and
  # would misplace rows by several frames by the end of the file.
  times = np.arange(18000) / 60
  table = np.c_[times, np.tile([1.0, 2.0, 3.0], (18000, 1))]
  path = tmp_path / 'long.csv'
  np.savetxt(path, table, fmt=['%.5f', '%.3f', '%.3f', '%.3f'], delimiter=',',
             header='time,A_x,A_y,A_z', comments='')
  take = formats.read_mocap_csv(path)
  assert take.rate == pytest.approx(60.0, rel=1e-7)
  assert take.positions.shape == (18000, 1, 3) and not np.isnan(take.positions).any()


@pytest.mark.parametrize('content, problem', [
    ('frame,A_x,A_y,A_z\n0,1,2,3\n0.1,1,2,3\n', 'header'),
    ('time,A_x,A_z,A_y\n0,1,2,3\n0.1,1,2,3\n', 'header'),
    ('time,A_x,A_y,A_z\n0,1,2,3\n0.1,1,abc,3\n', 'line 3: "abc" in column "A_y" is not a number'),
    ('time,A_x,A_y,A_z\n0,1,2,3\n0.1,1,2\n', 'line 3 has 3 fields, the header 4'),
    ('time,A_x,A_y,A_z\n0,1,2,3\n0.1,1,2,3\n0.05,1,2,3\n', 'line 4: time 0.05 does not increase'),
    ('time,A_x,A_y,A_z\n0,1,2,3\n0.1,1,2,3\n0.13,1,2,3\n', 'regular grid'),
])
def test_read_mocap_csv_rejects_bad_files_naming_them(tmp_path, content, problem):
  path = tmp_path / 'bad_mocap.csv'
  path.write_text(content)
  with pytest.raises(DataError, match=problem) as error:
    formats.read_mocap_csv(path)
  assert str(path) in str(error.value)


def test_fill_marker_gaps_interpolates_and_holds_edges():
  positions = np.zeros((6, 2, 3), np.float32)
  positions[:, 0, 0] = [np.nan, 1, np.nan, np.nan, 4, np.nan]
  positions[:, 1] = np.nan  # never seen
  filled, missing = features.fill_marker_gaps(positions)
  np.testing.assert_allclose(filled[:, 0, 0], [1, 1, 2, 3, 4, 4])
  assert np.all(np.isnan(filled[:, 1]))
  np.testing.assert_allclose(missing, [4 / 6, 1.0])


def _moving_body(rate, seconds=4.0, offset=(0.0, 0.0, 0.0), drift=(0.0, 0.0, 0.0)):
  """Three markers: two fixed relative to the body, one waving at 1 Hz (amplitude 100)."""
  t = np.arange(int(seconds * rate)) / rate
  body = np.array([[0.0, 0.0, 1000.0], [200.0, 0.0, 1400.0], [-200.0, 0.0, 1400.0]])
  positions = np.repeat(body[None], len(t), axis=0)
  positions[:, 2, 2] += 100 * np.sin(2 * np.pi * t)
  positions += np.asarray(offset) + np.asarray(drift) * t[:, None, None]
  return positions


def test_mocap_features_layout_and_invariance_to_position_in_room():
  still = features.mocap_features(_moving_body(60.0), 60.0)
  assert still.shape == (100, features.mocap_feature_dim(3)) and still.dtype == np.float32
  moved = features.mocap_features(_moving_body(60.0, offset=(3000, -2000, 0)), 60.0)
  np.testing.assert_allclose(moved, still, atol=1e-2)
  walking = features.mocap_features(_moving_body(60.0, drift=(500, 0, 0)), 60.0)
  np.testing.assert_allclose(walking[:, :18], still[:, :18], atol=1e-2)  # relative pos, vel
  # Body-centre velocity (the last frames hold the mocap's last position: no motion there).
  np.testing.assert_allclose(walking[:-2, 18], 500, rtol=1e-4)
  np.testing.assert_allclose(walking[:, 19:], still[:, 19:], atol=1e-2)


def test_mocap_features_velocity_and_rate_independence():
  at_60 = features.mocap_features(_moving_body(60.0), 60.0)
  at_120 = features.mocap_features(_moving_body(120.0), 120.0)
  # Per-frame means: the rate only changes how finely the motion is sampled. (The last frames
  # differ: there the mocap has ended, 1/60 s or 1/120 s before the 4 s, and its last value holds.)
  np.testing.assert_allclose(at_120[:-2], at_60[:-2], atol=0.5)  # mm and mm/s
  # The waving marker's vertical velocity, relative to the body centre (which moves by 1/3 of
  # it), up to the 40 ms averaging and the central difference (2 % of 419 mm/s).
  t = (np.arange(100) + 0.5) / 25
  expected = (2 / 3) * 100 * 2 * np.pi * np.cos(2 * np.pi * t)
  velocity = at_60[:, 9 + 2 * 3 + 2]
  np.testing.assert_allclose(velocity[1:-2], expected[1:-2], atol=9)


def test_mocap_features_never_yield_nan():
  positions = _moving_body(60.0)
  positions[:, 1] = np.nan  # a marker never seen
  positions[50:90, 2] = np.nan  # a long occlusion
  result = features.mocap_features(positions, 60.0, num_frames=120)  # longer than the mocap
  assert result.shape == (120, features.mocap_feature_dim(3))
  assert np.all(np.isfinite(result))
  np.testing.assert_array_equal(result[:, 3:6], 0.0)  # unseen marker sits at the body centre
  with pytest.raises(DataError, match='no marker'):
    features.mocap_features(np.full((10, 3, 3), np.nan), 60.0)


# ------------------------------------------------------------------------------------------
# audio_io


def test_load_audio_mixes_down_and_resamples_like_librosa(tmp_path):
  path = str(tmp_path / 'stereo.wav')
  written = fixtures.write_wav(path, fixtures.example_audio(1.0, 44100, 2, seed=3), 44100)
  audio = audio_io.load_audio(path)
  expected = librosa.resample(written.mean(axis=1), orig_sr=44100, target_sr=16000,
                              res_type='soxr_hq')
  assert audio.dtype == np.float32 and audio.shape == (16000,)
  np.testing.assert_allclose(audio, expected, atol=1e-6)


def test_load_audio_keeps_16k_mono_float_samples_exactly(tmp_path):
  path = str(tmp_path / 'mono.wav')
  samples = fixtures.example_audio(0.25, 16000, 1, seed=4).astype(np.float32)
  soundfile.write(path, samples, 16000, subtype='FLOAT')
  np.testing.assert_array_equal(audio_io.load_audio(path), samples[:, 0])


def test_load_audio_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'missing.wav')
  with pytest.raises(DataError, match='not found') as error:
    audio_io.load_audio(missing)
  assert missing in str(error.value)

  corrupt = tmp_path / 'corrupt.wav'
  corrupt.write_bytes(b'RIFF\x00\x00\x00\x00WAVEjunk' + os.urandom(64))
  with pytest.raises(DataError, match='not a readable audio file') as error:
    audio_io.load_audio(corrupt)
  assert str(corrupt) in str(error.value)

  empty = str(tmp_path / 'empty.wav')
  soundfile.write(empty, np.zeros((0, 1)), 16000)
  with pytest.raises(DataError, match='no samples') as error:
    audio_io.load_audio(empty)
  assert empty in str(error.value)

  with_nan = str(tmp_path / 'nan.wav')
  samples = np.zeros((100, 1), np.float32)
  samples[37] = np.nan
  soundfile.write(with_nan, samples, 16000, subtype='FLOAT')
  with pytest.raises(DataError, match='NaN .* sample 37') as error:
    audio_io.load_audio(with_nan)
  assert with_nan in str(error.value)
