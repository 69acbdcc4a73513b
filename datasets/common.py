"""Shared TFDS builder base: validated recordings in, fixed-length windows and metadata out.

Owns the data contract of BUILD_NOTES.md: the feature spec every corpus writes, cutting each
recording into windows (with `ccc_jax.windows`), the features computed from the audio once per
recording (log-mel, and the eGeMAPS LLDs in worker processes), the dataset metadata, and the
normalisation statistics computed on the training split only. A corpus builder only lists and
validates its recordings (`_list_recordings`, which should find every bad input file before
anything is written) and loads one recording at a time (`_load_recording`).
"""

from __future__ import annotations

import abc
import collections
from concurrent import futures
import dataclasses
import inspect
import multiprocessing
import os
from typing import Any, Iterator, Sequence

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax import metrics
from ccc_jax import windows
from ccc_jax.errors import DataError
from tensorflow_datasets.core import shuffle as tfds_shuffle

# TFDS shuffles a split in memory up to MAX_MEM_BUFFER_SIZE (1 GB) and spills the rest to disk
# through tf.io.gfile, which needs TensorFlow (not installed: a split over ~1.6 h of audio failed
# with "No module named 'tensorflow'"). Keep whole splits in memory, up to half the host's RAM.
tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(
    tfds_shuffle.MAX_MEM_BUFFER_SIZE,
    os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2)

LENGTH_TOLERANCE_FRAMES = int(features.LENGTH_TOLERANCE_S * features.LABEL_RATE)

# Default window: 100 label frames (4 s), hop 50 (2 s). 4 s spans the usual 2-4 s annotation
# delay, so most labels in a window have their cause inside it; a 50 % overlap puts every frame
# in two windows, so evaluation averages two predictions with different context and no frame
# sits only at a window edge.
DEFAULT_WINDOW = 100
DEFAULT_HOP = 50

# Modalities every corpus writes, computed from its audio.
AUDIO_MODALITIES = ('audio', 'logmel', 'egemaps')

def _egemaps_context() -> multiprocessing.context.BaseContext:
  """Where the eGeMAPS workers come from: a fork server that has imported openSMILE.

  Not fork: the preparing process may hold threads (TFDS, absl; JAX in tests), which fork
  copies in whatever state they are. Not spawn: every worker would import openSMILE and our
  modules afresh (2-3 s each on this machine, more than the features of a small corpus take).
  The fork server starts once per process, clean, imports them once, and forks each worker; the
  pool's initializer then starts openSMILE in each worker (0.5-1 s) while the main process
  lists the recordings. The preload list is the process's one fork server's: set before it
  starts.
  """
  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload(['opensmile', 'ccc_jax.egemaps'])
  return context


@dataclasses.dataclass(eq=False)
class WindowedConfig(tfds.core.BuilderConfig):
  """Window length and hop in label frames (25 Hz), shared by every corpus config."""
  window: int = DEFAULT_WINDOW
  hop: int = DEFAULT_HOP


@dataclasses.dataclass
class Recording:
  """One loaded recording, every signal already aligned to its `num_frames` label frames.

  Attributes:
    recording_id: unique within the dataset.
    num_frames: label frames (25 Hz) the recording lasts.
    audio: float32 16 kHz mono waveform; trimmed or zero-padded to num_frames * 640 samples by
      the base builder.
    labels: float32 `[num_frames, tasks]` gold standard, or None in an unlabelled split.
    frame_features: extra per-label-frame features by name (`mocap`, `egemaps_functionals`), each
      float32 `[num_frames, dim]`.
  """
  recording_id: str
  num_frames: int
  audio: np.ndarray
  labels: np.ndarray | None = None
  frame_features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _stats_json(moments: metrics.RunningMoments) -> dict[str, Any]:
  """{'mean': ..., 'std': ...} as JSON-ready floats (lists for vector statistics)."""
  return moments.to_json(min_std=features.MIN_STD)


def require_finite(values: np.ndarray, path: str | os.PathLike, what: str) -> None:
  """Raises DataError naming `path` if `values` hold NaN or infinite entries."""
  values = np.asarray(values)
  if not np.all(np.isfinite(values)):
    flat_index = int(np.flatnonzero(~np.isfinite(values))[0])
    row = np.unravel_index(flat_index, values.shape)[0] if values.ndim else 0
    raise DataError(f'{os.fspath(path)}: {what} contains NaN or infinite values '
                    f'(first in row {row})')


def require_similar_length(path: str | os.PathLike, num_frames: int, audio_path: str,
                           audio_frames: int, tolerance_frames: int = LENGTH_TOLERANCE_FRAMES,
                           ) -> None:
  """Raises DataError if a per-frame file and its audio differ by more than the tolerance."""
  if abs(num_frames - audio_frames) > tolerance_frames:
    raise DataError(
        f'{os.fspath(path)}: {num_frames} frames ({num_frames / features.LABEL_RATE:.2f} s) but '
        f'its audio {audio_path} lasts {audio_frames} frames '
        f'({audio_frames / features.LABEL_RATE:.2f} s); they must agree within '
        f'{tolerance_frames / features.LABEL_RATE:.2f} s')


def require_dir(path: str | os.PathLike, what: str) -> str:
  """Returns `path` as a string; raises DataError if it is not an existing folder."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise DataError(f'{path}: {what} folder not found')
  return path


def manual_dir(dl_manager: tfds.download.DownloadManager) -> str:
  """The manual_dir given to download_and_prepare, checked to exist and hold something."""
  path = dl_manager._manual_dir  # pylint: disable=protected-access  (the checked property asserts)
  if path is None:
    raise DataError('manual_dir: not given; pass --manual_dir=<the folder holding the corpus>')
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise DataError(f'manual_dir {path}: ' + ('is a file, not a folder' if os.path.exists(path)
                                              else 'does not exist or is empty'))
  if not [name for name in os.listdir(path) if not name.startswith('.')]:
    raise DataError(f'manual_dir {path}: does not exist or is empty; it must hold the corpus '
                    'files (datasets/README.md says which)')
  return path


class WindowedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of every corpus builder: writes the data contract's windows and metadata.

  Subclasses set TASKS, LABELLED_SPLITS, BUILDER_CONFIGS (WindowedConfig subclasses) and
  FRAME_FEATURES, and implement `_list_recordings` and `_load_recording`.
  """

  # 1.1.0 adds `egemaps`; 1.2.0 makes `logmel` and `mocap` causal (`ccc_jax.features`), so that
  # live prediction computes the features a model was trained on. A new version, so that preparing
  # again writes a new folder instead of finding the old one complete; reading picks the newest
  # version prepared.
  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'eGeMAPSv02 LLDs (`egemaps`) from the audio, for every corpus.',
                   '1.2.0': 'Causal features: log-mel windows end at their hop\'s end; mocap gaps '
                            'hold the last sighting, velocity is a backward difference.',
                   '1.3.0': 'Per-recording statistics of the acoustic inputs (`recording_stats`), '
                            'for `model.recording_norm`.'}
  TASKS: tuple[str, ...] = ()
  LABELLED_SPLITS: tuple[str, ...] = ('train', 'dev', 'test')
  # Processes computing eGeMAPS while the main process writes windows; None: one per CPU.
  # `datasets.prepare.prepare_dataset(workers=...)` sets it (BUILD_NOTES.md "eGeMAPS branch":
  # speed against worker count).
  feature_workers: int | None = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The file defining the builder class.

    TFDS's own version first tries package resources and, for a regular package like ours,
    then needs the `importlib_resources` backport (not a dependency) just for an isinstance
    check; its fallback, used here directly, gives the same path.
    """
    return epath.Path(inspect.getfile(cls))

  def _frame_feature_dims(self) -> dict[str, int | None]:
    """Extra per-label-frame features this config writes, name -> width (None: from data)."""
    return {}

  @abc.abstractmethod
  def _list_recordings(self, dl_manager) -> dict[str, Sequence[Any]]:
    """Finds and validates every input; returns split -> per-recording sources.

    Should raise DataError for any bad input it can detect without decoding audio, so that a
    bad corpus fails before a single window is written. May add corpus-specific metadata.
    """

  @abc.abstractmethod
  def _load_recording(self, source: Any) -> Recording:
    """Loads one recording listed by `_list_recordings`."""

  def _info(self) -> tfds.core.DatasetInfo:
    window = self.builder_config.window
    # Float tensors are stored as raw bytes: 10x faster to write than tf.train.FloatList and
    # read back as the same float32 arrays.
    def tensor(shape):
      return tfds.features.Tensor(shape=shape, dtype=np.float32,
                                  encoding=tfds.features.Encoding.BYTES)
    spec = {
        'recording': tfds.features.Text(),
        'start': tfds.features.Scalar(dtype=np.int32),
        'mask': tensor((window,)),
        'labels': tensor((window, len(self.TASKS))),
        'audio': tensor((window * features.SAMPLES_PER_FRAME,)),
        'logmel': tensor((window * features.LOGMEL_PER_FRAME, features.NUM_MELS)),
        'egemaps': tensor((window * egemaps.EGEMAPS_PER_FRAME, egemaps.NUM_EGEMAPS)),
    }
    for name, dim in self._frame_feature_dims().items():
      spec[name] = tensor((window, dim))
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict(spec),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    config = self.builder_config
    windows.window_starts(1, config.window, config.hop)  # rejects a bad window/hop up front
    sources = self._list_recordings(dl_manager)
    if not sources.get('train'):
      raise DataError(f'{self.name}: no recordings in the train split')
    metadata = self.info.metadata
    metadata.update({
        'tasks': list(self.TASKS),
        'modalities': list(AUDIO_MODALITIES) + list(self._frame_feature_dims()),
        'sample_rate': features.SAMPLE_RATE,
        'label_rate': features.LABEL_RATE,
        'window': config.window,
        'hop': config.hop,
        'labelled_splits': [split for split in sources if split in self.LABELLED_SPLITS],
        'recordings': {split: {} for split in sources},
        'stats': {},
        'recording_stats': {split: {} for split in sources},
    })
    self._frame_feature_widths: dict[str, int] = {}
    return {split: self._generate_examples(split, split_sources)
            for split, split_sources in sources.items()}

  def _download_and_prepare(self, dl_manager, download_config=None):
    """TFDS's preparation, with the eGeMAPS worker processes alive for all of its splits."""
    workers = self.feature_workers or os.cpu_count() or 1
    with futures.ProcessPoolExecutor(workers, mp_context=_egemaps_context(),
                                     initializer=egemaps.egemaps_lld,
                                     initargs=(np.zeros(0, np.float32), 1)) as pool:
      self._egemaps_pool, self._egemaps_workers = pool, workers
      try:
        super()._download_and_prepare(dl_manager, download_config)
      finally:
        self._egemaps_pool = None

  def _with_egemaps(self, sources: Sequence[Any], labelled: bool):
    """(recording, its eGeMAPS LLDs) in order; up to `workers + 1` recordings are loaded and
    in the worker processes at a time, so memory stays bounded whatever the corpus size."""
    pending = collections.deque()
    for source in sources:
      recording = self._checked(self._load_recording(source), labelled)
      pending.append((recording, self._egemaps_pool.submit(
          egemaps.egemaps_lld, recording.audio, recording.num_frames)))
      if len(pending) > self._egemaps_workers:
        recording, lld = pending.popleft()
        yield recording, lld.result()
    while pending:
      recording, lld = pending.popleft()
      yield recording, lld.result()

  def _generate_examples(self, split: str, sources: Sequence[Any]):
    config = self.builder_config
    window, hop = config.window, config.hop
    labelled = split in self.LABELLED_SPLITS
    stats = {name: metrics.RunningMoments() for name in self.info.metadata['modalities']}
    for index, (recording, lld) in enumerate(self._with_egemaps(sources, labelled)):
      num_frames = recording.num_frames
      logmel = features.log_mel(recording.audio, num_frames)
      if split == 'train':
        stats['audio'].add(recording.audio)
        stats['logmel'].add(logmel)
        stats['egemaps'].add(lld)
        for name, values in recording.frame_features.items():
          stats[name].add(values)
      starts = windows.window_starts(num_frames, window, hop)
      logging.info('%s %d/%d %s: %.1f s, %d windows', split, index + 1, len(sources),
                   recording.recording_id, num_frames / features.LABEL_RATE, len(starts))
      self.info.metadata['recordings'][split][recording.recording_id] = num_frames
      self.info.metadata['recording_stats'][split][recording.recording_id] = (
          features.recording_stats({'audio': recording.audio, 'logmel': logmel}))
      for start in starts:
        start = int(start)
        mask = windows.frame_mask(num_frames, start, window)
        if labelled:
          labels = windows.slice_window(recording.labels, start, window)
        else:
          labels = np.zeros((window, len(self.TASKS)), np.float32)
        example = {
            'recording': recording.recording_id,
            'start': start,
            'mask': mask,
            'labels': labels,
            'audio': windows.slice_window(recording.audio, start, window,
                                          features.SAMPLES_PER_FRAME),
            'logmel': windows.slice_window(logmel, start, window, features.LOGMEL_PER_FRAME),
            'egemaps': windows.slice_window(lld, start, window, egemaps.EGEMAPS_PER_FRAME),
        }
        for name, values in recording.frame_features.items():
          example[name] = windows.slice_window(values, start, window)
        yield f'{recording.recording_id}@{start}', example
    if split == 'train':
      self.info.metadata['stats'] = {name: _stats_json(stat) for name, stat in stats.items()}

  def _checked(self, recording: Recording, labelled: bool) -> Recording:
    """Fits the audio to the frame count and checks shapes and values of a loaded recording."""
    where = f'{self.name} recording {recording.recording_id}'
    num_frames = recording.num_frames
    if num_frames <= 0:
      raise DataError(f'{where}: has no label frames')
    num_samples = num_frames * features.SAMPLES_PER_FRAME
    audio = np.asarray(recording.audio, np.float32)[:num_samples]
    recording.audio = np.pad(audio, (0, num_samples - audio.shape[0]))
    require_finite(recording.audio, where, 'audio')
    if labelled:
      if recording.labels is None or recording.labels.shape != (num_frames, len(self.TASKS)):
        shape = None if recording.labels is None else recording.labels.shape
        raise DataError(f'{where}: labels have shape {shape}, expected '
                        f'{(num_frames, len(self.TASKS))}')
      recording.labels = recording.labels.astype(np.float32)
      require_finite(recording.labels, where, 'labels')
    expected = self._frame_feature_dims()
    if set(recording.frame_features) != set(expected):
      raise DataError(f'{where}: has features {sorted(recording.frame_features)}, expected '
                      f'{sorted(expected)}')
    for name, values in recording.frame_features.items():
      values = np.asarray(values, np.float32)
      width = expected[name] or self._frame_feature_widths.setdefault(name, values.shape[-1])
      if values.shape != (num_frames, width):
        raise DataError(f'{where}: {name} has shape {values.shape}, expected '
                        f'{(num_frames, width)}')
      require_finite(values, where, name)
      recording.frame_features[name] = values
    return recording

