"""Shared TFDS builder base: validated recordings in, fixed-length windows and metadata out.

Owns the data contract of BUILD_NOTES.md: the feature spec every corpus writes, cutting each
recording into windows (with `ccc_jax.windows`), the features computed from the audio once per
recording (log-mel, eGeMAPS LLDs), the 16-bit storage of the waveform (`audio_io.to_pcm16`),
the dataset metadata, the normalisation statistics computed on the training split only, and how a
split is written: worker processes prepare one recording each and write its serialised windows
to a temporary ArrayRecord file; this process then copies the windows, in TFDS's storage order
(sorted by the hash of their key, as TFDS's own writer orders them), into the split's shards.
Memory stays bounded by a few recordings whatever the corpus size, and no TensorFlow is
needed. A corpus builder only lists and validates its recordings (`_list_recordings`, which
should find every bad input file before anything is written) and loads one recording at a time
(`_load_recording`, run in the worker processes).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import inspect
import multiprocessing
import os
import shutil
import tempfile
from concurrent import futures
from typing import Any, Sequence

from absl import logging
from array_record.python import array_record_module
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ccc_jax import audio_io
from ccc_jax import egemaps
from ccc_jax import features
from ccc_jax import metrics
from ccc_jax import windows
from ccc_jax.errors import DataError
from tensorflow_datasets.core import hashing
from tensorflow_datasets.core import writer as tfds_writer
from tensorflow_datasets.core.utils import shard_utils

LENGTH_TOLERANCE_FRAMES = int(features.LENGTH_TOLERANCE_S * features.LABEL_RATE)

# Default window: 100 label frames (4 s), hop 50 (2 s). 4 s spans the usual 2-4 s annotation
# delay, so most labels in a window have their cause inside it; a 50 % overlap puts every frame
# in two windows, so evaluation averages two predictions with different context and no frame
# sits only at a window edge.
DEFAULT_WINDOW = 100
DEFAULT_HOP = 50

# Modalities every corpus writes, computed from its audio.
AUDIO_MODALITIES = ('audio', 'logmel', 'egemaps')



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


class WindowedBuilder(tfds.core.dataset_builder.FileReaderBuilder, skip_registration=True):
  """Base of every corpus builder: writes the data contract's windows and metadata.

  A TFDS `FileReaderBuilder` (what `GeneratorBasedBuilder` is, less its single-process writer):
  TFDS publishes and reads the dataset as any other; `_download_and_prepare` writes it.

  Subclasses set TASKS, LABELLED_SPLITS, BUILDER_CONFIGS (WindowedConfig subclasses) and
  FRAME_FEATURES, and implement `_list_recordings` and `_load_recording`.
  """

  # 1.1.0 adds `egemaps`; 1.2.0 makes `logmel` and `mocap` causal (`ccc_jax.features`), so that
  # live prediction computes the features a model was trained on. A new version, so that preparing
  # again writes a new folder instead of finding the old one complete; reading picks the newest
  # version prepared. 1.3.0 stores `audio` as 16-bit PCM (`audio_io.to_pcm16`): a folder of an
  # older version is refused by `input_pipeline.open_corpus` with the command that prepares it
  # again.
  VERSION = tfds.core.Version('1.3.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': 'eGeMAPSv02 LLDs (`egemaps`) from the audio, for every corpus.',
                   '1.2.0': 'Causal features: log-mel windows end at their hop\'s end; mocap gaps '
                            'hold the last sighting, velocity is a backward difference.',
                   '1.3.0': '`audio` stored as int16 (16-bit PCM, full scale 32768), half the '
                            'bytes of float32; written by one worker process per recording; '
                            'per-recording statistics of the acoustic inputs (`recording_stats`, '
                            'for `model.recording_norm`).'}
  TASKS: tuple[str, ...] = ()
  LABELLED_SPLITS: tuple[str, ...] = ('train', 'dev', 'test')
  # Processes preparing recordings (loading, features, serialised windows); None: one per CPU.
  # `datasets.prepare.prepare_dataset(workers=...)` sets it (BUILD_NOTES.md, issue 16: speed
  # against worker count). What is written does not depend on it.
  workers: int | None = None

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
    """Loads one recording listed by `_list_recordings` (in a worker process: `source` is
    pickled, and the builder is a copy made from its constructor arguments)."""

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
        'audio': tfds.features.Tensor(shape=(window * features.SAMPLES_PER_FRAME,),
                                      dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
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

  def _split_sources(self, dl_manager) -> dict[str, Sequence[Any]]:
    """Lists and validates every split's recordings and starts the metadata."""
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
    return sources

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Writes every split (TFDS calls this inside its `incomplete.*` folder, which it renames
    to the version folder only when everything is written, and deletes on an exception)."""
    del download_config  # no download; shards are sized by TFDS's default ShardConfig
    sources = self._split_sources(dl_manager)
    workers = self.workers or os.cpu_count() or 1
    config = self.builder_config
    if any(config is named for named in self.BUILDER_CONFIGS):
      config = config.name
    with futures.ProcessPoolExecutor(
        workers, mp_context=_worker_context(), initializer=_start_worker,
        initargs=(type(self), config, os.fspath(self.data_dir_root))) as pool:
      try:
        split_infos = [self._write_split(split, split_sources, pool, workers)
                       for split, split_sources in sources.items()]
      except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    self.info.set_splits(tfds.core.SplitDict(split_infos))

  def _write_split(self, split: str, sources: Sequence[Any], pool: futures.Executor,
                   workers: int) -> tfds.core.SplitInfo:
    """Writes one split: recordings in the workers, then the shards in TFDS's order."""
    labelled = split in self.LABELLED_SPLITS
    scratch = os.path.join(os.fspath(self.data_dir), f'.{split}-recordings')
    os.makedirs(scratch)
    paths = [os.path.join(scratch, f'{index:06d}.array_record') for index in range(len(sources))]
    stats = {name: metrics.RunningMoments() for name in self.info.metadata['modalities']}
    widths: dict[str, tuple[int, str]] = {}
    written: list[WrittenRecording] = []
    pending: collections.deque = collections.deque()
    # At most 2 x workers recordings submitted ahead: memory stays bounded by the workers'
    # recordings whatever the corpus size, and results are taken in recording order.
    for index, source in enumerate(sources):
      pending.append(pool.submit(_write_recording, split, source, labelled, paths[index]))
      if len(pending) >= 2 * workers:
        written.append(self._take(pending.popleft(), split, len(sources), stats, widths))
    while pending:
      written.append(self._take(pending.popleft(), split, len(sources), stats, widths))
    if split == 'train':
      self.info.metadata['stats'] = {name: _stats_json(stat) for name, stat in stats.items()}
    shard_lengths, num_bytes = self._write_shards(split, written, paths)
    shutil.rmtree(scratch)
    return tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=num_bytes,
                               filename_template=self._get_filename_template(split))

  def _take(self, future: futures.Future, split: str, count: int,
            stats: dict[str, metrics.RunningMoments],
            widths: dict[str, tuple[int, str]]) -> WrittenRecording:
    """A worker's result, in recording order: progress, metadata, statistics, width checks."""
    result = future.result()
    recordings = self.info.metadata['recordings'][split]
    logging.info('%s %d/%d %s: %.1f s, %d windows', split, len(recordings) + 1, count,
                 result.recording_id, result.num_frames / features.LABEL_RATE, len(result.keys))
    if result.clipped:
      logging.warning('%s %s: %d audio samples beyond 16-bit full scale clipped', split,
                      result.recording_id, result.clipped)
    for name, width in result.widths.items():
      first = widths.setdefault(name, (width, result.recording_id))
      if first[0] != width:
        raise DataError(f'{self.name} recording {result.recording_id}: {name} is {width} wide, '
                        f'recording {first[1]} {first[0]}')
    recordings[result.recording_id] = result.num_frames
    self.info.metadata['recording_stats'][split][result.recording_id] = result.recording_stats
    for name, moments in (result.moments or {}).items():
      stats[name].merge(*moments)
    return result

  def _write_shards(self, split: str, written: Sequence[WrittenRecording],
                    paths: Sequence[str]) -> tuple[list[int], int]:
    """Copies every window from the recordings' files into the split's shards, in the order
    TFDS's writer gives them (sorted by the hash of the key, salted with the split name), with
    as many shards as it would make; one window in memory at a time."""
    hasher = hashing.Hasher(split)
    order = sorted((hasher.hash_key(key), file_index, record_index)
                   for file_index, result in enumerate(written)
                   for record_index, key in enumerate(result.keys))
    for previous, current in zip(order, order[1:]):
      if previous[0] == current[0]:
        raise DataError(f'{self.name} {split}: two windows share the key '
                        f'{written[current[1]].keys[current[2]]!r} (recording ids must be unique)')
    num_bytes = sum(sum(result.sizes) for result in written)
    num_shards = shard_utils.ShardConfig().get_number_shards(num_bytes, len(order))
    boundaries = shard_utils.get_shard_boundaries(len(order), num_shards)
    template = self._get_filename_template(split)
    example_writer = tfds_writer.ExampleWriter(file_format=self.info.file_format)
    readers = [array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
               for path in paths]
    try:
      begin = 0
      for shard_index, end in enumerate(boundaries):
        windows_in_shard = ((hkey, readers[file_index].read([record_index])[0])
                            for hkey, file_index, record_index in order[begin:end])
        example_writer.write(os.fspath(template.sharded_filepath(
            shard_index=shard_index, num_shards=num_shards)), windows_in_shard)
        begin = end
    finally:
      for reader in readers:
        reader.close()
    return [end - begin for begin, end in zip([0, *boundaries[:-1]], boundaries)], num_bytes

  def write_recording(self, split: str, source: Any, labelled: bool,
                      path: str) -> WrittenRecording:
    """Loads one recording, computes its features and writes its serialised windows to
    `path` (one ArrayRecord file); runs in a worker process."""
    config = self.builder_config
    window, hop = config.window, config.hop
    recording = self._checked(self._load_recording(source), labelled)
    num_frames = recording.num_frames
    logmel = features.log_mel(recording.audio, num_frames)
    lld = egemaps.egemaps_lld(recording.audio, num_frames)
    moments = None
    if split == 'train':
      moments = {'audio': metrics.block_moments(recording.audio),
                 'logmel': metrics.block_moments(logmel),
                 'egemaps': metrics.block_moments(lld)}
      moments.update({name: metrics.block_moments(values)
                      for name, values in recording.frame_features.items()})
    # Of the float waveform, before 16-bit rounding: what inference computes for a new recording.
    own_stats = features.recording_stats({'audio': recording.audio, 'logmel': logmel})
    audio, clipped = audio_io.to_pcm16(recording.audio)
    keys, sizes = [], []
    feature_spec = self.info.features
    writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
    try:
      for start in windows.window_starts(num_frames, window, hop):
        start = int(start)
        if labelled:
          labels = windows.slice_window(recording.labels, start, window)
        else:
          labels = np.zeros((window, len(self.TASKS)), np.float32)
        example = {
            'recording': recording.recording_id,
            'start': start,
            'mask': windows.frame_mask(num_frames, start, window),
            'labels': labels,
            'audio': windows.slice_window(audio, start, window, features.SAMPLES_PER_FRAME),
            'logmel': windows.slice_window(logmel, start, window, features.LOGMEL_PER_FRAME),
            'egemaps': windows.slice_window(lld, start, window, egemaps.EGEMAPS_PER_FRAME),
        }
        for name, values in recording.frame_features.items():
          example[name] = windows.slice_window(values, start, window)
        serialised = feature_spec.serialize_example(example)
        writer.write(serialised)
        keys.append(f'{recording.recording_id}@{start}')
        sizes.append(len(serialised))
    finally:
      writer.close()
    return WrittenRecording(
        recording_id=recording.recording_id, num_frames=num_frames, keys=keys, sizes=sizes,
        widths={name: values.shape[1] for name, values in recording.frame_features.items()},
        moments=moments, clipped=clipped, recording_stats=own_stats)

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
      width = expected[name] or (values.shape[-1] if values.ndim == 2 else -1)
      if values.shape != (num_frames, width):
        raise DataError(f'{where}: {name} has shape {values.shape}, expected '
                        f'{(num_frames, width)}')
      require_finite(values, where, name)
      recording.frame_features[name] = values
    return recording


def _worker_context() -> multiprocessing.context.BaseContext:
  """Where the recording workers come from: a fork server that has imported their modules.

  Not fork: the preparing process may hold threads (TFDS, absl; JAX in tests), which fork
  copies in whatever state they are. Not spawn: every worker would import openSMILE, TFDS and
  our modules afresh (2-3 s each on this machine, more than the features of a small corpus
  take). The fork server starts once per process, clean, imports them once, and forks each
  worker; the pool's initializer then starts openSMILE in each worker (0.5-1 s) while the main
  process lists the recordings. `scipy.signal` and `soxr`: librosa imports them on its first
  resampling (2.7 s here, once per worker otherwise). The preload list is the process's one
  fork server's: set before it starts.
  """
  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload(['opensmile', 'ccc_jax.egemaps', 'datasets.common',
                                  'scipy.signal', 'soxr'])
  return context


def new_builder(builder_cls: type[tfds.core.DatasetBuilder], config, data_dir: str):
  """`builder_cls(data_dir=data_dir, config=config)` writing ArrayRecord files.

  Made with a temporary folder of its own as the process's temporary folder, removed after.
  Why: a builder of a dataset not yet prepared makes an empty `mkdtemp('tfds')` folder (for
  metadata from Google's bucket, which is off) that TFDS never removes: without this, every
  preparation left one empty folder in /tmp per process (the main one and each worker).
  """
  scratch = tempfile.mkdtemp(prefix='ccc_jax_builder_')
  system_tempdir = tempfile.tempdir
  tempfile.tempdir = scratch
  try:
    return builder_cls(data_dir=data_dir, config=config, file_format='array_record')
  finally:
    tempfile.tempdir = system_tempdir
    shutil.rmtree(scratch, ignore_errors=True)


# The builder a worker process prepares recordings for (set by `_start_worker`).
_worker_builder: WindowedBuilder | None = None


def _start_worker(builder_cls: type[WindowedBuilder], config: str | WindowedConfig,
                  data_dir: str) -> None:
  """Pool initializer: makes this worker's builder and starts openSMILE once.

  `config` is a config's name when it is one of the class's own (TFDS refuses an unpickled copy
  of a named config as a different config of the same name), else the config itself.
  """
  global _worker_builder
  _worker_builder = new_builder(builder_cls, config, data_dir)
  egemaps.egemaps_lld(np.zeros(0, np.float32), 1)


def _write_recording(split: str, source: Any, labelled: bool, path: str) -> WrittenRecording:
  """Runs in a worker: `WindowedBuilder.write_recording` of the worker's builder."""
  return _worker_builder.write_recording(split, source, labelled, path)


@dataclasses.dataclass
class WrittenRecording:
  """What a worker reports of one recording it wrote to its temporary file.

  Attributes:
    recording_id: as the builder named it.
    num_frames: label frames it lasts.
    keys: the windows' keys (`<recording>@<start>`), in the order written.
    sizes: serialised bytes of each window.
    widths: width of each extra per-frame feature (checked across recordings by the caller).
    moments: training split only: per modality `metrics.block_moments` of the recording's
      frames (merged in recording order, so the statistics do not depend on the workers).
    clipped: audio samples clipped to the 16-bit range.
    recording_stats: its own statistics of the acoustic inputs (`features.recording_stats`).
  """
  recording_id: str
  num_frames: int
  keys: list[str]
  sizes: list[int]
  widths: dict[str, int]
  moments: dict[str, tuple[int, np.ndarray, np.ndarray]] | None
  clipped: int
  recording_stats: dict[str, dict[str, Any]]
