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
  # Frame j's window is [160 j - 240, 160 j + 160): librosa without centring, on the audio after
  # 240 zeros (its frame j then starts at padded sample 160 j = sample 160 j - 240).
  padded = np.concatenate([np.zeros(240, np.float32), audio, np.zeros(800, np.float32)])
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
  floor = np.log(features.LOG_FLOOR)
  # Windows end with their hop: the frames before 4 i end before the burst starts (causal)...
  np.testing.assert_allclose(energy[:4 * label_frame], floor, rtol=1e-6)
  # ...the label frame's own 4 frames hear it; the windows of the last two lie wholly inside
  # it, the last one ending with it...
  assert np.all(energy[4 * label_frame: 4 * label_frame + 4] > floor + 10)
  assert sorted(np.argsort(energy)[-2:].tolist()) == [4 * label_frame + 2, 4 * label_frame + 3]
  # ...and windows reach 240 samples back: the next label frame's first two frames hear its end.
  assert np.all(energy[4 * label_frame + 4: 4 * label_frame + 6] > floor + 10)
  np.testing.assert_allclose(energy[4 * label_frame + 6:], floor, rtol=1e-6)


def test_log_mel_is_causal():
  audio = fixtures.example_audio(1.0, 16000, 1, seed=2)[:, 0].astype(np.float32)
  reference = features.log_mel(audio)
  for label_frame in [0, 3, 11, 23]:
    changed = audio.copy()
    changed[640 * (label_frame + 1):] = np.random.default_rng(label_frame).normal(
        size=len(audio) - 640 * (label_frame + 1))
    got = features.log_mel(changed)
    # The FFT's float32 rounding may differ with the input (vectorisation), not more.
    np.testing.assert_allclose(got[:4 * (label_frame + 1)], reference[:4 * (label_frame + 1)],
                               atol=1e-5)
    assert not np.allclose(got[4 * (label_frame + 1)], reference[4 * (label_frame + 1)])


def test_log_mel_span_reads_only_its_frames_and_240_samples_before():
  rng = np.random.default_rng(3)
  waveform = rng.normal(size=30 * 640).astype(np.float32)
  whole = features.log_mel(waveform)
  for begin, end in [(0, 4), (1, 2), (5, 17), (29, 30)]:
    # What the span may not read is poisoned: a live buffer need not hold it.
    buffer = waveform[:end * 640].copy()
    buffer[:max(640 * begin - 240, 0)] = np.nan
    np.testing.assert_allclose(features.log_mel_span(buffer, begin, end),
                               whole[4 * begin: 4 * end], rtol=1e-6, atol=1e-5)


def test_log_mel_num_frames_trims_and_pads():
  audio = fixtures.example_audio(0.5, 16000, 1, seed=1)[:, 0]
  full = features.log_mel(audio)  # 13 label frames (8000 samples = 12.5 frames)
  assert full.shape == (52, 40)
  # Equal up to float32 rounding: the FFT's vectorisation depends on how many frames it gets.
  np.testing.assert_allclose(features.log_mel(audio, num_frames=5), full[:20], atol=1e-5)
  longer = features.log_mel(audio, num_frames=16)
  np.testing.assert_allclose(longer[:52], full, atol=1e-5)
  # Frames 52 on start at sample 160 * 52 - 240 = 8080, after the audio: silence.
  assert np.all(longer[52:] == np.float32(np.log(features.LOG_FLOOR)))


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


def test_fill_marker_gaps_holds_the_last_sighting():
  positions = np.zeros((6, 2, 3), np.float32)
  positions[:, 0, 0] = [np.nan, 1, np.nan, np.nan, 4, np.nan]
  positions[:, 1] = np.nan  # never seen
  filled, missing = features.fill_marker_gaps(positions)
  # Causal: before the first sighting nothing is known; a gap holds the last seen position.
  np.testing.assert_allclose(filled[:, 0, 0], [np.nan, 1, 1, 1, 4, 4])
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
  # Body-centre velocity: a backward difference, so 0 in frame 0 (nothing before it); the last
  # frame holds the mocap's last position (it ends 1/60 s before 4 s) and slows down.
  assert np.all(walking[0, 18:] == 0)
  np.testing.assert_allclose(walking[1:-1, 18], 500, rtol=1e-5)
  assert walking[-1, 18] < 490
  np.testing.assert_allclose(walking[:, 19:], still[:, 19:], atol=1e-2)


def test_mocap_features_velocity_and_rate_independence():
  at_60 = features.mocap_features(_moving_body(60.0), 60.0)
  at_120 = features.mocap_features(_moving_body(120.0), 120.0)
  # Per-frame means: the rate only changes how finely the motion is sampled. (The last frame
  # differs: there the mocap has ended, 1/60 s or 1/120 s before the 4 s, and its last value
  # holds.)
  np.testing.assert_allclose(at_120[:-1], at_60[:-1], atol=0.5)  # mm and mm/s
  # The waving marker's height relative to the body centre (which moves by 1/3 of it):
  # A sin(2 pi t) with A = 200/3. Frame i's mean is the exact mean over [i/25, (i+1)/25), its
  # velocity the backward difference of means, (s_i - s_(i-1)) * 25: the slope over the 40 ms
  # around i/25 (the start of frame i). Up to sampling the sine at 60 Hz (0.1 % of 419 mm/s).
  amplitude, start = 200 / 3, np.arange(101) / 25
  means = 25 * amplitude / (2 * np.pi) * -np.diff(np.cos(2 * np.pi * start))
  expected = np.r_[0.0, np.diff(means) * 25]
  height, velocity = at_60[:, 3 * 2 + 2], at_60[:, 9 + 3 * 2 + 2]
  np.testing.assert_allclose(height[:-1] - height[:-1].mean(), means[:-1] - means[:-1].mean(),
                             atol=0.1)
  np.testing.assert_allclose(velocity[:-1], expected[:-1], atol=0.5)


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


def test_mocap_features_hold_a_hidden_marker_and_place_an_unseen_one_at_the_centre():
  rate = 50.0  # two mocap frames per label frame, frame 2 i at label frame i's start
  positions = np.zeros((40, 3, 3))
  positions[:, 0] = [100.0, 0, 0]
  positions[:, 1] = [-100.0, 0, 0]
  positions[:, 2] = [0.0, 300, 0]
  positions[:, 0, 0] += 10 * np.arange(40)  # marker 0 moves 10 mm per mocap frame...
  positions[10:, 0] = np.nan  # ...until it is hidden from mocap frame 10 (label frame 5) on
  positions[:20, 2] = np.nan  # marker 2 is first seen at mocap frame 20 (label frame 10)
  result = features.mocap_features(positions, rate)
  assert result.shape == (20, features.mocap_feature_dim(3))
  relative_x0, velocity_x0 = result[:, 0], result[:, 9]
  # Seen markers 0 and 1: centre at x = 5 k, marker 0 at 100 + 5 k relative to it; the mean over
  # label frame i (mocap frames 2 i .. 2 i + 2, linearly interpolated) is 100 + 5 (2 i + 1).
  np.testing.assert_allclose(relative_x0[:4], 100 + 5 * (2 * np.arange(4) + 1), atol=1e-4)
  np.testing.assert_allclose(velocity_x0[1:4], 250, atol=1e-3)  # 10 mm per frame at 25 Hz
  # Hidden from mocap frame 10 on: held at frame 9's 190, so 100 + 45 from label frame 5 on.
  np.testing.assert_allclose(relative_x0[5:9], 145, atol=1e-4)
  np.testing.assert_allclose(velocity_x0[6:9], 0, atol=1e-3)
  # Marker 2 sits at the centre (relative 0) until it is seen (label frame 9 interpolates
  # towards mocap frame 20); then the centre is the mean of three markers, (30, 100, 0).
  np.testing.assert_allclose(result[:9, 6:9], 0, atol=1e-6)
  assert np.all(result[9, 6:8] != 0)
  np.testing.assert_allclose(result[10:, 6:9], np.tile([-30, 200, 0], (10, 1)), atol=1e-3)
  np.testing.assert_allclose(relative_x0[10:], 160, atol=1e-3)
  np.testing.assert_allclose(result[11:, 9:], 0, atol=1e-3)  # nothing moves any more


def _take_with_gaps(rate, seconds=3.0, seed=0):
  """Five markers moving randomly; occlusions; one marker first seen midway; nothing seen at the
  very start."""
  rng = np.random.default_rng(seed)
  num = int(seconds * rate)
  positions = np.cumsum(rng.normal(scale=5.0, size=(num, 5, 3)), axis=0)
  positions += rng.uniform(-500, 500, (1, 5, 3)) + [0, 0, 1000]
  positions[rng.random((num, 5)) < 0.1] = np.nan  # single-frame dropouts
  positions[num // 4: num // 2, 1] = np.nan  # a long occlusion
  positions[: num // 3, 4] = np.nan  # first seen a third of the way in
  positions[:3] = np.nan  # no marker seen in the first frames
  return positions


@pytest.mark.parametrize('rate', [60.0, 119.88, 10.0])
def test_mocap_features_are_causal(rate):
  positions = _take_with_gaps(rate)
  reference = features.mocap_features(positions, rate, num_frames=75)
  assert np.all(np.isfinite(reference))
  rng = np.random.default_rng(1)
  for frame in [0, 1, 6, 30, 60]:
    # Label frame `frame` is final once the first mocap frame at or after its end has arrived:
    # changing (or hiding) every mocap frame after that leaves frames 0 .. `frame` as they were.
    end = (frame + 1) / 25
    final_at = next(k for k in range(len(positions)) if k / rate >= end)
    first_free = final_at + 1
    changed = positions.copy()
    changed[first_free:] += rng.normal(scale=300.0, size=changed[first_free:].shape)
    changed[first_free:, [0, 3]] = np.nan
    got = features.mocap_features(changed, rate, num_frames=75)
    np.testing.assert_allclose(got[:frame + 1], reference[:frame + 1], rtol=1e-6, atol=1e-5)
    assert not np.allclose(got[frame + 1:], reference[frame + 1:], atol=1.0)
    # And the stream hands frame `frame` out as soon as that mocap frame is pushed.
    stream = features.MocapFeatureStream(rate, 5)
    early = stream.push(positions[:final_at])
    assert len(early) <= frame  # frame `frame` is not final yet (at 10 Hz, nor the one before)
    early = np.concatenate([early, stream.push(positions[final_at: final_at + 1])])
    assert len(early) > frame
    np.testing.assert_allclose(early, reference[:len(early)], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('rate', [60.0, 119.88, 10.0])
def test_mocap_stream_equals_the_whole_take_for_any_chunking(rate):
  positions = _take_with_gaps(rate, seed=2)
  num_frames = 80  # past the take's 3 s: the last value holds
  expected = features.mocap_features(positions, rate, num_frames=num_frames)
  rng = np.random.default_rng(3)
  for _ in range(4):
    stream = features.MocapFeatureStream(rate, 5)
    parts, start = [], 0
    while start < len(positions):
      size = int(rng.choice([0, 1, 1, 2, 3, 5, 7, 13, 31, 64]))
      part = stream.push(positions[start: start + size])
      assert part.shape[1] == features.mocap_feature_dim(5) and part.dtype == np.float32
      parts.append(part)
      start += size
    assert stream.num_emitted == sum(len(part) for part in parts)
    parts.append(stream.finish(num_frames))
    np.testing.assert_allclose(np.concatenate(parts), expected, rtol=1e-5, atol=1e-4)
  # Label frame 0's velocities are 0; the centre's too while no marker has been seen.
  assert np.all(expected[0, 15:] == 0)


def test_mocap_stream_finish_checks_its_frame_count():
  stream = features.MocapFeatureStream(60.0, 3)
  assert len(stream.push(_moving_body(60.0, seconds=1.0))) == 24  # the 25th ends after 59/60 s
  with pytest.raises(ValueError, match='already returned'):
    stream.finish(20)
  assert len(stream.finish(24)) == 0
  with pytest.raises(ValueError, match='push after finish'):
    stream.push(_moving_body(60.0, seconds=1.0))
  assert features.MocapFeatureStream(60.0, 3).finish(2).shape == (2, 21)


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
