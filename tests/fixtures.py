"""Writers of small corpora in exactly the published file formats, for tests.

Owns the fixture layouts: `write_recola` writes an AVEC 2016 RECOLA package (44.1 kHz stereo
WAV, `;`-separated individual ratings whose rater names carry trailing spaces, gold-standard and
eGeMAPS ARFF files with CRLF line endings), `write_creativeit` the normalised CreativeIT layout
(mocap CSV with occluded markers as empty fields and NaN, irregular annotation traces). Each
returns what it wrote, so tests can compare a prepared window with its source. A prepared
synthetic dataset needs no fixture: conftest.py prepares the builder's `tiny` config once per
test run (`tiny_data_dir`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import soundfile

RECOLA_RATERS = ('FM1', 'FM2', 'FM3', 'FF1', 'FF2', 'FF3')
RECOLA_TASKS = ('arousal', 'valence')
CREATIVEIT_TASKS = ('activation', 'valence', 'dominance')


def example_audio(seconds: float, sample_rate: int, channels: int, seed: int) -> np.ndarray:
  """A deterministic, speech-band test signal [samples, channels] in [-0.5, 0.5]."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  columns = []
  for channel in range(channels):
    tone = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
               for f in rng.uniform(100, 3000, 3))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (0.5 + channel) * t)
    columns.append(envelope * tone + 0.02 * rng.standard_normal(t.shape))
  return np.clip(np.stack(columns, axis=1), -0.5, 0.5)


def write_wav(path: str, audio: np.ndarray, sample_rate: int,
              subtype: str = 'PCM_16') -> np.ndarray:
  """Writes `audio` [samples, channels]; returns what a reader gets back (after quantisation)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, audio, sample_rate, subtype=subtype)
  return soundfile.read(path, dtype='float32', always_2d=True)[0]


def trace(num_frames: int, seed: int) -> np.ndarray:
  """A smooth label-like trace in [-1, 1] at 25 Hz."""
  rng = np.random.default_rng(seed)
  t = np.arange(num_frames) / 25.0
  return np.clip(0.5 * np.sin(2 * np.pi * t / rng.uniform(3, 8) + rng.uniform(0, 6))
                 + 0.1 * rng.standard_normal(num_frames), -1, 1)


def _write_crlf(path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    f.write('\r\n'.join(lines) + '\r\n')


def write_gold_arff(path: str, recording_id: str, values: np.ndarray) -> None:
  """An AVEC 2016 ratings_gold_standard ARFF (CRLF line endings, row k at k * 40 ms)."""
  lines = ['@relation GOLDSTANDARD', '', '@attribute Instance_name string',
           '@attribute frameTime numeric', '@attribute GoldStandard numeric', '', '', '@data', '']
  lines += [f'{recording_id},{k * 0.04:.2f},{value:.6f}' for k, value in enumerate(values)]
  _write_crlf(path, lines)


def write_ratings_csv(path: str, ratings: np.ndarray) -> None:
  """An AVEC 2016 ratings_individual CSV: `;`-separated, rater names with trailing spaces."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # The published header: the first five names end with a space, the last does not.
  header = 'time;' + ';'.join(f'{name} ' for name in RECOLA_RATERS[:-1]) + ';' + RECOLA_RATERS[-1]
  with open(path, 'w', encoding='utf-8') as f:
    f.write(header + '\n')
    for k, row in enumerate(ratings):
      f.write(f'{k * 0.04:.2f};' + ';'.join(f'{value:.4f}' for value in row) + '\n')


def write_egemaps_arff(path: str, recording_id: str, table: np.ndarray) -> None:
  """An AVEC 2016 features_audio ARFF: quoted name, frameTime, features, class `?` (CRLF)."""
  lines = ['@relation openSMILE_features', '', "@attribute name string",
           '@attribute frameTime numeric']
  lines += [f'@attribute feature_{i} numeric' for i in range(table.shape[1])]
  lines += ['@attribute class numeric', '', '@data', '']
  lines += [f"'{recording_id}',{k * 0.04:.6f}," + ','.join(f'{v:.6e}' for v in row) + ',?'
            for k, row in enumerate(table)]
  _write_crlf(path, lines)


@dataclasses.dataclass
class RecolaFixture:
  """A written RECOLA package and the values in its files, by recording id."""
  root: str
  sample_rate: int
  audio: dict[str, np.ndarray]  # as read back from the WAV: [samples, channels] float32
  gold: dict[str, np.ndarray]  # [frames, 2] as written to the ARFF files (arousal, valence)
  ratings: dict[str, np.ndarray]  # [frames, raters, 2] as written to the CSV files
  egemaps: dict[str, np.ndarray]  # [frames, 2 * num_features], arousal block then valence


def write_recola(root: str, recordings: tuple[str, ...] = ('train_1', 'train_2', 'dev_1', 'test_1'),
                 seconds: float = 6.0, sample_rate: int = 44100, channels: int = 2,
                 num_egemaps: int = 4) -> RecolaFixture:
  """Writes a small AVEC 2016 RECOLA package under `root`.

  Labels have seconds * 25 + 1 rows (0.00 ... seconds, as the published 7501 rows for 300 s).
  Test recordings get audio and features only.
  """
  fixture = RecolaFixture(root=root, sample_rate=sample_rate, audio={}, gold={}, ratings={},
                          egemaps={})
  num_rows = int(round(seconds * 25)) + 1
  for index, recording_id in enumerate(recordings):
    fixture.audio[recording_id] = write_wav(
        os.path.join(root, 'recordings_audio', f'{recording_id}.wav'),
        example_audio(seconds, sample_rate, channels, seed=index), sample_rate)
    blocks = []
    for task_index, task in enumerate(RECOLA_TASKS):
      rng = np.random.default_rng([index, task_index])
      table = rng.normal(size=(num_rows, num_egemaps))
      write_egemaps_arff(os.path.join(root, 'features_audio', task, f'{recording_id}.arff'),
                         recording_id, table)
      blocks.append(np.array([[float(f'{v:.6e}') for v in row] for row in table]))
    fixture.egemaps[recording_id] = np.concatenate(blocks, axis=1)
    if recording_id.startswith('test'):
      continue
    gold, ratings = [], []
    for task_index, task in enumerate(RECOLA_TASKS):
      raters = np.stack([trace(num_rows, seed=100 * index + 10 * task_index + rater)
                         for rater in range(len(RECOLA_RATERS))], axis=1).round(4)
      write_ratings_csv(os.path.join(root, 'ratings_individual', task, f'{recording_id}.csv'),
                        raters)
      values = trace(num_rows, seed=1000 + 10 * index + task_index).round(6)
      write_gold_arff(os.path.join(root, 'ratings_gold_standard', task, f'{recording_id}.arff'),
                      recording_id, values)
      gold.append(values)
      ratings.append(raters)
    fixture.gold[recording_id] = np.stack(gold, axis=1)
    fixture.ratings[recording_id] = np.stack(ratings, axis=2)
  return fixture


MOCAP_MARKERS = ('LFHD', 'RFHD', 'C7', 'LSHO', 'RSHO', 'LWRA', 'RWRA')


def creativeit_markers(count: int) -> tuple[str, ...]:
  """`count` marker names: the seven above, then `M08`, `M09`, ..."""
  return MOCAP_MARKERS[:count] + tuple(f'M{i + 1:02d}' for i in range(7, count))


@dataclasses.dataclass
class CreativeItFixture:
  """A written CreativeIT normalised layout and its contents, by recording id."""
  root: str
  audio: dict[str, np.ndarray]  # as read back: [samples, channels] float32
  audio_rate: int
  mocap: dict[str, np.ndarray]  # [frames, markers, 3] with NaN where written empty/NaN
  mocap_rate: float
  annotations: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]  # task -> [(t, v)]


def write_mocap_csv(path: str, positions: np.ndarray, rate: float,
                    markers: tuple[str, ...] = MOCAP_MARKERS) -> None:
  """Mocap CSV `time,<m>_x,<m>_y,<m>_z,...`; NaN positions alternate between '' and 'NaN'."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  header = ['time'] + [f'{m}_{axis}' for m in markers for axis in 'xyz']
  with open(path, 'w', encoding='utf-8') as f:
    f.write(','.join(header) + '\n')
    for k, frame in enumerate(positions.reshape(len(positions), -1)):
      fields = [f'{k / rate:.5f}']
      for j, value in enumerate(frame):
        fields.append(('' if (k + j) % 2 else 'NaN') if np.isnan(value) else f'{value:.3f}')
      f.write(','.join(fields) + '\n')


def write_annotation_csv(path: str, times: np.ndarray, values: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('time,value\n')
    for t, v in zip(times, values):
      f.write(f'{t:.3f},{v:.4f}\n')


def write_creativeit(root: str,
                     actors_by_performance: dict[tuple[str, str], tuple[str, ...]] | None = None,
                     seconds: float = 6.0, audio_rate: int = 48000, mocap_rate: float = 60.0,
                     annotators: int = 3,
                     markers: tuple[str, ...] = MOCAP_MARKERS) -> CreativeItFixture:
  """Writes the normalised CreativeIT layout: <session>/<performance>/<actor>/...

  Default: two sessions, four actors, each actor in one performance with a partner, 7 markers
  (the release has 45: `markers=creativeit_markers(45)`).
  """
  if actors_by_performance is None:
    actors_by_performance = {('session1', 'perf1'): ('actor1', 'actor2'),
                             ('session2', 'perf1'): ('actor3', 'actor4')}
  fixture = CreativeItFixture(root=root, audio={}, audio_rate=audio_rate, mocap={},
                              mocap_rate=mocap_rate, annotations={})
  index = 0
  for (session, performance), actors in actors_by_performance.items():
    for actor in actors:
      index += 1
      folder = os.path.join(root, session, performance, actor)
      recording_id = f'{session}/{performance}/{actor}'
      fixture.audio[recording_id] = write_wav(
          os.path.join(folder, 'audio.wav'), example_audio(seconds, audio_rate, 1, seed=index),
          audio_rate)
      rng = np.random.default_rng(index)
      num = int(round(seconds * mocap_rate))
      base = rng.uniform(-500, 500, (1, len(markers), 3)) + [0, 0, 1200]
      positions = base + np.cumsum(rng.normal(0, 2, (num, len(markers), 3)), axis=0)
      positions = positions.round(3)
      positions[10:25, 5] = np.nan  # an occluded wrist
      positions[40:44, 1, 2] = np.nan  # a single lost coordinate
      write_mocap_csv(os.path.join(folder, 'mocap.csv'), positions, mocap_rate, markers)
      fixture.mocap[recording_id] = positions
      fixture.annotations[recording_id] = {}
      for task in CREATIVEIT_TASKS:
        traces = []
        for annotator in range(annotators):
          # Irregular sampling (logged on change), ending a little before the audio does.
          times = np.sort(np.concatenate([[0.0], rng.uniform(0, seconds - 0.5, 40)])).round(3)
          values = np.clip(rng.normal(0, 0.4, times.shape), -1, 1).round(4)
          write_annotation_csv(os.path.join(folder, 'annotations', task,
                                            f'annotator{annotator + 1}.csv'), times, values)
          traces.append((times, values))
        fixture.annotations[recording_id][task] = traces
  return fixture


def write_recording(directory, seconds=2.0, rate=44100):
  """`(wav, mocap)`: a stereo WAV and a 60 Hz mocap CSV with the synthetic corpus' markers, as a
  new recording for `Predictor` and `launch.predict`."""
  from datasets.synthetic_avd import simulation  # pylint: disable=g-import-not-at-top
  markers = simulation.MARKERS
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * rate)) / rate
  audio = np.stack([0.2 * np.sin(2 * np.pi * 180 * t), 0.05 * rng.normal(size=t.shape)], axis=1)
  wav = directory / 'talk.wav'
  soundfile.write(wav, audio, rate)
  frames = int(seconds * 60)
  positions = rng.normal(size=(frames, len(markers), 3)) * 10 + 500
  header = ['time'] + [f'{m}_{axis}' for m in markers for axis in 'xyz']
  table = np.column_stack([np.arange(frames) / 60, positions.reshape(frames, -1)])
  mocap = directory / 'talk_mocap.csv'
  np.savetxt(mocap, table, delimiter=',', header=','.join(header), comments='', fmt='%.5f')
  return wav, mocap
