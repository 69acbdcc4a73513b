"""TFDS builder of RECOLA from the AVEC 2016 package (manual download).

Owns reading the AVEC 2016 layout (documented in datasets/README.md):
recordings_audio/{train,dev,test}_N.wav, arousal and valence gold standards from
ratings_gold_standard/*/*.arff or, with `gold_standard='raters_mean'`, the mean of the raters
in ratings_individual/*/*.csv, and optionally the AVEC baseline's eGeMAPS functionals in
features_audio/*/*.arff (`egemaps_functionals`; the eGeMAPS LLDs, `egemaps`, are computed from the
audio for every config, as for every corpus).
Partitions come from the file names; the test partition has audio only (its labels are not
public). RECOLA has no dominance: tasks are ('arousal', 'valence').
"""

from __future__ import annotations

import dataclasses
import os
import re

from absl import logging
import numpy as np

from ccc_jax import audio_io
from ccc_jax import features
from ccc_jax.errors import DataError
from datasets import common
from datasets.recola import readers

# The six raters of the AVEC 2016 package's individual ratings (ratings_individual/*/*.csv).
RATERS = ('FM1', 'FM2', 'FM3', 'FF1', 'FF2', 'FF3')
# Label rows a recording may have past its audio's last frame (the published extra row).
_LABEL_ROWS_PAST_AUDIO = 1
TASKS = ('arousal', 'valence')
_AUDIO_NAME = re.compile(r'^(train|dev|test)_(\d+)\.wav$')
_SPLITS = ('train', 'dev', 'test')
_LABELLED_SPLITS = ('train', 'dev')
# Columns of the eGeMAPS ARFF files that are not features.
_NOT_FEATURES = ('name', 'Instance_name', 'frameTime', 'class')


@dataclasses.dataclass(eq=False)
class RecolaConfig(common.WindowedConfig):
  """Where the labels come from and whether to add the AVEC baseline's eGeMAPS functionals.

  Attributes:
    gold_standard: 'arff' reads ratings_gold_standard (the AVEC 2016 gold standard, raters'
      offsets re-centred); 'raters_mean' averages the raters of ratings_individual.
    functionals: also write `egemaps_functionals` [T, 2 x 88]: the arousal (4 s window) and
      valence (6 s window) eGeMAPS functionals of features_audio, side by side, as the AVEC 2016
      baseline computed them.
  """
  gold_standard: str = 'arff'
  functionals: bool = False


@dataclasses.dataclass
class _Source:
  """A validated recording: its audio path, frame count and already-parsed per-frame data."""
  recording_id: str
  audio_path: str
  num_frames: int
  labels: np.ndarray | None
  functionals: np.ndarray | None


class Builder(common.WindowedBuilder):
  """RECOLA (AVEC 2016): 27 five-minute French dyadic conversations; arousal, valence at 25 Hz."""

  TASKS = TASKS
  LABELLED_SPLITS = _LABELLED_SPLITS
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Request the AVEC 2016 RECOLA package (https://diuf.unifr.ch/main/diva/recola/) and pass its
  root folder as manual_dir. Used: recordings_audio/, ratings_gold_standard/ (or
  ratings_individual/ with gold_standard='raters_mean') and, with functionals=True,
  features_audio/.
  """
  BUILDER_CONFIGS = [
      RecolaConfig(name='default', description='AVEC 2016 gold standard from the ARFF files.'),
      RecolaConfig(name='raters_mean', gold_standard='raters_mean',
                   description='Gold standard = plain mean of the six raters in '
                               'ratings_individual.'),
      RecolaConfig(name='egemaps_functionals', functionals=True,
                   description='AVEC 2016 gold standard plus the baseline\'s eGeMAPS '
                               'functionals (features_audio).'),
  ]

  def _frame_feature_dims(self):
    return {'egemaps_functionals': None} if self.builder_config.functionals else {}

  def _list_recordings(self, dl_manager):
    config = self.builder_config
    if config.gold_standard not in ('arff', 'raters_mean'):
      raise DataError(f'recola: gold_standard must be "arff" or "raters_mean", '
                      f'got "{config.gold_standard}"')
    root = common.manual_dir(dl_manager)
    audio_dir = common.require_dir(os.path.join(root, 'recordings_audio'), 'RECOLA audio')
    label_root = os.path.join(root, 'ratings_gold_standard' if config.gold_standard == 'arff'
                              else 'ratings_individual')
    label_dirs = {task: common.require_dir(os.path.join(label_root, task), 'RECOLA label')
                  for task in TASKS}
    if config.functionals:
      feature_dirs = [common.require_dir(os.path.join(root, 'features_audio', task),
                                         'RECOLA eGeMAPS') for task in TASKS]
    names = sorted((name for name in os.listdir(audio_dir) if _AUDIO_NAME.match(name)),
                   key=lambda name: (_SPLITS.index(_AUDIO_NAME.match(name)[1]),
                                     int(_AUDIO_NAME.match(name)[2])))
    if not names:
      raise DataError(f'{audio_dir}: no recordings named train_N.wav, dev_N.wav or test_N.wav')
    sources = {}
    functionals_width = None
    for name in names:
      split = _AUDIO_NAME.match(name)[1]
      recording_id = name[:-len('.wav')]
      audio_path = os.path.join(audio_dir, name)
      info = audio_io.audio_info(audio_path)
      audio_frames = features.num_label_frames(
          int(np.ceil(info.num_samples * features.SAMPLE_RATE / info.sample_rate)))
      num_frames = audio_frames
      labels = None
      if split in _LABELLED_SPLITS:
        per_task = []
        for task in TASKS:
          path, values = self._read_labels(label_dirs[task], recording_id)
          # The published gold standard has one row more than the audio has frames (a row at
          # t = 300.00 s for 300 s of audio); more than that is another length, not rounding.
          common.require_similar_length(path, len(values), audio_path, audio_frames,
                                        tolerance_frames=_LABEL_ROWS_PAST_AUDIO)
          if len(values) > audio_frames:
            logging.info('%s: %d label row(s) past the end of its audio dropped', path,
                         len(values) - audio_frames)
          per_task.append(values)
        num_frames = min([audio_frames] + [len(values) for values in per_task])
        labels = np.stack([values[:num_frames] for values in per_task], axis=1)
      functionals = None
      if config.functionals:
        blocks = []
        for feature_dir in feature_dirs:
          path = os.path.join(feature_dir, f'{recording_id}.arff')
          _, table = readers.read_arff(path, drop=_NOT_FEATURES)
          common.require_similar_length(path, len(table), audio_path, audio_frames)
          # Features may end a few frames early: hold the last vector, as AVEC 2016 does.
          table = table[:num_frames]
          blocks.append(np.pad(table, [(0, num_frames - len(table)), (0, 0)], mode='edge'))
        functionals = np.concatenate(blocks, axis=1).astype(np.float32)
        if functionals_width is None:
          functionals_width = functionals.shape[1]
        elif functionals.shape[1] != functionals_width:
          raise DataError(f'{feature_dirs[0]}: {recording_id} has {functionals.shape[1]} eGeMAPS '
                          f'functionals, other recordings {functionals_width}')
      sources.setdefault(split, []).append(_Source(recording_id, audio_path, num_frames,
                                                   labels, functionals))
    self.info.metadata['gold_standard'] = config.gold_standard
    return {split: sources[split] for split in _SPLITS if split in sources}

  def _read_labels(self, label_dir: str, recording_id: str) -> tuple[str, np.ndarray]:
    """(path, per-frame values) of one task's labels for one recording."""
    if self.builder_config.gold_standard == 'arff':
      path = os.path.join(label_dir, f'{recording_id}.arff')
      return path, readers.read_gold_standard_arff(path)
    path = os.path.join(label_dir, f'{recording_id}.csv')
    raters, ratings = readers.read_ratings_csv(path)
    if sorted(raters) != sorted(RATERS):
      raise DataError(f'{path}: expected the ratings of the {len(RATERS)} AVEC 2016 raters '
                      f'{", ".join(RATERS)}; found {", ".join(raters) or "none"} (missing: '
                      f'{", ".join(sorted(set(RATERS) - set(raters))) or "none"})')
    return path, ratings.mean(axis=1)

  def _load_recording(self, source: _Source) -> common.Recording:
    frame_features = ({} if source.functionals is None else
                      {'egemaps_functionals': source.functionals})
    return common.Recording(
        recording_id=source.recording_id, num_frames=source.num_frames,
        audio=audio_io.load_audio(source.audio_path),
        labels=None if source.labels is None else source.labels.astype(np.float32),
        frame_features=frame_features)

