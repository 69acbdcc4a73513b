"""TFDS builder of USC CreativeIT from the normalised layout (manual download).

Owns reading the layout documented in datasets/README.md:

  <manual_dir>/<session>/<performance>/<actor>/
    audio.wav                                   any rate and channel count
    mocap.csv                                   time,<marker>_x,<marker>_y,<marker>_z,... (mm)
    annotations/{activation,valence,dominance}/<annotator>.csv    time,value in [-1, 1]

Each actor in each performance is one recording (`session/performance/actor`). Annotation
traces (any sampling, often irregular) are interpolated to the 25 Hz label frames and averaged
over annotators; mocap of any rate and marker count becomes `ccc_jax.features.mocap_features`.
Splits are by actor, so no actor is in two splits: given explicitly in the config, or drawn
by a seeded shuffle and written to the metadata (`actors`).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import numpy as np

from ccc_jax import audio_io
from ccc_jax import features
from ccc_jax import formats
from ccc_jax.errors import DataError
from datasets import common

TASKS = ('activation', 'valence', 'dominance')
# A marker missing for more of a recording than this is reported (it is still gap-filled).
_REPORT_MISSING_FRACTION = 0.5


@dataclasses.dataclass(eq=False)
class CreativeItConfig(common.WindowedConfig):
  """Actor split. With dev_actors and test_actors empty, a seeded shuffle picks about 15 % of
  the actors (at least one) for dev and for test; the rest train."""
  dev_actors: tuple[str, ...] = ()
  test_actors: tuple[str, ...] = ()
  split_seed: int = 0


@dataclasses.dataclass
class _Source:
  recording_id: str
  actor: str
  folder: str
  num_frames: int
  labels: np.ndarray  # [num_frames, 3]


def read_annotation_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(times, values) of one annotator's trace; header `time,value`, values in [-1, 1]."""
  columns, table = formats.read_table(path, 'annotation')
  if columns != ['time', 'value']:
    raise DataError(f'{path}: annotation header must be "time,value"; got '
                    f'"{",".join(columns)[:80]}"')
  times, values = table[:, 0], table[:, 1]
  if np.any(np.diff(times) < 0):  # annotation tools may repeat a time stamp; never go back
    raise DataError(f'{path}: line {int(np.flatnonzero(np.diff(times) < 0)[0]) + 3}: time goes '
                    'backwards')
  if times[0] < 0:
    raise DataError(f'{path}: line 2: negative time {times[0]}')
  if np.any(np.abs(values) > 1.0 + 1e-6):
    row = int(np.flatnonzero(np.abs(values) > 1.0 + 1e-6)[0])
    raise DataError(f'{path}: line {row + 2}: value {values[row]} outside [-1, 1]')
  return times, values


def assign_actor_splits(actors: list[str], seed: int) -> dict[str, list[str]]:
  """Seeded actor split: ~15 % dev, ~15 % test (at least one each), the rest train."""
  if len(actors) < 3:
    raise DataError(f'creativeit: {len(actors)} actor(s) found; an actor-independent '
                    'train/dev/test split needs at least 3')
  order = [actors[index] for index in np.random.default_rng(seed).permutation(len(actors))]
  held_out = max(1, int(round(0.15 * len(actors))))
  return {'train': sorted(order[2 * held_out:]), 'dev': sorted(order[:held_out]),
          'test': sorted(order[held_out:2 * held_out])}


class Builder(common.WindowedBuilder):
  """USC CreativeIT: improvised dyadic theatre, close-talk audio and body mocap per actor, A/V/D."""

  TASKS = TASKS
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request USC CreativeIT (https://sail.usc.edu/CreativeIT/) and arrange it into the normalised
  layout described in datasets/README.md; pass that folder as manual_dir.
  """
  BUILDER_CONFIGS = [CreativeItConfig(name='default', description='Seeded actor split.')]

  def _frame_feature_dims(self):
    return {'mocap': None}  # 6 x markers + 3, markers read from the files

  def _list_recordings(self, dl_manager):
    root = common.manual_dir(dl_manager)
    folders = []
    for session in _subfolders(root):
      for performance in _subfolders(os.path.join(root, session)):
        for actor in _subfolders(os.path.join(root, session, performance)):
          folders.append((session, performance, actor))
    if not folders:
      raise DataError(f'{root}: no <session>/<performance>/<actor>/ folders; {_LAYOUT}')
    if not any(os.path.exists(os.path.join(root, *parts, 'audio.wav')) for parts in folders):
      raise DataError(_layout_problem(root))
    markers, by_actor = None, {}
    for session, performance, actor in folders:
      folder = os.path.join(root, session, performance, actor)
      source, take_markers = self._validate(folder, f'{session}/{performance}/{actor}', actor)
      if markers is None:
        markers, first_folder = take_markers, folder
      elif take_markers != markers:
        raise DataError(f'{os.path.join(folder, "mocap.csv")}: markers differ from '
                        f'{os.path.join(first_folder, "mocap.csv")} '
                        f'({len(take_markers)} vs {len(markers)} markers, or another order)')
      by_actor.setdefault(actor, []).append(source)
    actor_splits = self._actor_splits(sorted(by_actor))
    self.info.metadata['actors'] = actor_splits
    self.info.metadata['mocap_markers'] = list(markers)
    return {split: [source for actor in actors for source in by_actor[actor]]
            for split, actors in actor_splits.items() if actors}

  def _actor_splits(self, actors: list[str]) -> dict[str, list[str]]:
    config = self.builder_config
    if not config.dev_actors and not config.test_actors:
      return assign_actor_splits(actors, config.split_seed)
    named = list(config.dev_actors) + list(config.test_actors)
    unknown = sorted(set(named) - set(actors))
    if unknown:
      raise DataError(f'creativeit: config names actors {unknown} not found; actors: {actors}')
    both = sorted(set(config.dev_actors) & set(config.test_actors))
    if both:
      raise DataError(f'creativeit: actors {both} are in both dev_actors and test_actors')
    return {'train': [actor for actor in actors if actor not in named],
            'dev': sorted(config.dev_actors), 'test': sorted(config.test_actors)}

  def _validate(self, folder: str, recording_id: str, actor: str):
    """Reads and checks everything of one recording but its audio samples."""
    audio_path = os.path.join(folder, 'audio.wav')
    info = audio_io.audio_info(audio_path)
    duration = info.duration
    num_frames = features.num_label_frames(int(np.ceil(duration * features.SAMPLE_RATE)))
    mocap_path = os.path.join(folder, 'mocap.csv')
    take = formats.read_mocap_csv(mocap_path)
    mocap_frames = int(round(take.positions.shape[0] / take.rate * features.LABEL_RATE))
    common.require_similar_length(mocap_path, mocap_frames, audio_path, num_frames)
    _, missing = features.fill_marker_gaps(take.positions)
    if np.all(missing == 1.0):
      raise DataError(f'{mocap_path}: no marker is seen in any frame')
    mostly_missing = [name for name, fraction in zip(take.markers, missing)
                      if fraction > _REPORT_MISSING_FRACTION]
    if mostly_missing:
      logging.warning('%s: markers missing in more than %d%% of frames (gap-filled): %s',
                      mocap_path, 100 * _REPORT_MISSING_FRACTION, ', '.join(mostly_missing))
    frame_times = np.arange(num_frames) / features.LABEL_RATE
    labels = np.zeros((num_frames, len(TASKS)))
    for index, task in enumerate(TASKS):
      task_dir = common.require_dir(os.path.join(folder, 'annotations', task), 'annotation')
      files = sorted(name for name in os.listdir(task_dir) if name.endswith('.csv'))
      if not files:
        raise DataError(f'{task_dir}: no annotator .csv files')
      for name in files:
        path = os.path.join(task_dir, name)
        times, values = read_annotation_csv(path)
        if times[-1] > duration + features.LENGTH_TOLERANCE_S:
          raise DataError(f'{path}: annotation runs to {times[-1]:.2f} s but its audio '
                          f'{audio_path} lasts {duration:.2f} s')
        # Linear between logged points; the first and last values hold beyond them (trace
        # tools log on change, so a still hand stops the log early).
        labels[:, index] += np.interp(frame_times, times, values)
      labels[:, index] /= len(files)
    source = _Source(recording_id=recording_id, actor=actor, folder=folder,
                     num_frames=num_frames, labels=labels.astype(np.float32))
    return source, take.markers

  def _load_recording(self, source: _Source) -> common.Recording:
    take = formats.read_mocap_csv(os.path.join(source.folder, 'mocap.csv'))
    mocap = features.mocap_features(take.positions, take.rate, source.num_frames)
    return common.Recording(
        recording_id=source.recording_id, num_frames=source.num_frames,
        audio=audio_io.load_audio(os.path.join(source.folder, 'audio.wav')),
        labels=source.labels, frame_features={'mocap': mocap})


_LAYOUT = ('expected <manual_dir>/<session>/<performance>/<actor>/ folders holding audio.wav, '
           'mocap.csv and annotations/ (datasets/README.md)')


def _layout_problem(root: str) -> str:
  """What is wrong when no <session>/<performance>/<actor>/ folder of `root` has an audio.wav."""
  for folder, _, names in os.walk(root):
    if 'audio.wav' in names:
      found = os.path.relpath(os.path.join(folder, 'audio.wav'), root)
      levels = len(found.split(os.sep)) - 1
      if levels > 3:
        deeper = os.path.join(root, *found.split(os.sep)[:levels - 3])
        return (f'{root}: the recordings are {levels - 3} folder level(s) deeper than expected '
                f'(found {found}); pass --manual_dir={deeper}; {_LAYOUT}')
      return f'{root}: found {found}, {3 - levels} folder level(s) too shallow; {_LAYOUT}'
  return f'{root}: no audio.wav anywhere below it; {_LAYOUT}'


def _subfolders(path: str) -> list[str]:
  return sorted(name for name in os.listdir(path)
                if not name.startswith('.') and os.path.isdir(os.path.join(path, name)))
