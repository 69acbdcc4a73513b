"""Reading prepared corpora: metadata, normalisation, and the grain training pipeline.

Owns everything between a prepared TFDS ArrayRecord dataset and a host batch of numpy arrays:

- `Corpus`: one prepared dataset (splits as random-access sources, tasks, modalities, window, and
  the training-split statistics used to z-normalise inputs everywhere, inference included).
- `normalise`: the single normalisation used by training, evaluation and inference.
- `train_iterator`: a deterministic, checkpointable grain iterator of this process's part of each
  global batch. Global batch `j` is always elements `[j B, (j + 1) B)` of the shuffled, repeated
  stream, whatever the number of processes: process `p` of `P` reads the `p`-th contiguous chunk.
  So one process with four devices and two processes with two each train on the same batches.
- The device-resident path's pieces (`train._DeviceFeed` puts them together): `read_train_split`
  (the split as stored, read once), `WindowOrder` (the window numbers of `train_dataset`'s
  batches, from the same grain shuffle) and `gather_windows` (a batch gathered and normalised
  on a device). `normalisation` and `model_inputs` are the one normalisation of both paths.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
from typing import Any, Sequence

import grain
import numpy as np

from ccc_jax import audio_io
from ccc_jax.config import DatasetSpec, ModelInfo
from ccc_jax.errors import CorpusError

# The oldest prepared-dataset version this reader understands: 1.3.0 stores `audio` as int16.
OLDEST_READABLE_VERSION = '1.3.0'


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A prepared dataset: per-split random-access sources and its metadata."""
  name: str
  data_dir: str
  metadata: dict[str, Any]
  sources: dict[str, Any]
  spec: str = ''  # as `--dataset` names it; '' : `name`

  @property
  def tasks(self) -> tuple[str, ...]:
    return tuple(self.metadata['tasks'])

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.metadata['modalities'])

  @property
  def window(self) -> int:
    return int(self.metadata['window'])

  @property
  def stats(self) -> dict[str, Any]:
    return self.metadata['stats']

  def recordings(self, split: str) -> dict[str, int]:
    """Recording id -> number of label frames, for one split."""
    return dict(self.metadata['recordings'][split])

  def recording_stats(self, split: str) -> dict[str, dict[str, Any]]:
    """Recording id -> its own statistics of the acoustic inputs (`features.recording_stats`),
    for one split; what `model.recording_norm` standardises with."""
    stored = self.metadata.get('recording_stats', {})
    if split not in stored:
      spec = self.spec or self.name
      raise CorpusError(
          f'{self.name} under {self.data_dir} has no per-recording statistics, which '
          'model.recording_norm needs (datasets prepared before version 1.3.0 lack them); '
          f'prepare it again: python -m launch.prepare --dataset={spec} '
          f'--data_dir={self.data_dir}')
    return stored[split]

  def is_labelled(self, split: str) -> bool:
    return split in self.metadata['labelled_splits']

  def source(self, split: str):
    if split not in self.sources:
      raise CorpusError(f'{self.name} has no split {split!r}; it has {sorted(self.sources)}')
    return self.sources[split]

  def input_dims(self) -> dict[str, int]:
    """Per modality, the size the model sees per label frame's feature row."""
    example = self.source('train')[0]
    dims = {}
    for name in self.modalities:
      value = np.asarray(example[name])
      dims[name] = int(value.shape[-1]) if name != 'audio' else value.shape[0] // self.window
    return dims

  def require_modalities(self, modalities: Sequence[str]) -> None:
    """Raises CorpusError, with the command that prepares the corpus again, if it lacks one of
    `modalities` (a corpus prepared before `egemaps` existed, dataset version 1.0.0, has none)."""
    missing = [m for m in modalities if m not in self.modalities]
    if missing:
      spec = self.spec or self.name
      raise CorpusError(
          f'{self.name} under {self.data_dir} has no {", ".join(map(repr, missing))} input '
          f'(it has {", ".join(self.modalities)}), which the model uses; if the dataset was '
          f'prepared by an older version, prepare it again: python -m launch.prepare '
          f'--dataset={spec} --data_dir={self.data_dir}')

  def model_info(self, tasks: Sequence[str], modalities: Sequence[str]) -> ModelInfo:
    """What a model trained on `tasks` of this corpus from `modalities` needs to know of it
    (saved with it)."""
    self.task_indices(tasks)
    self.require_modalities(modalities)
    return ModelInfo(tasks=tuple(tasks), input_dims=self.input_dims(), stats=self.stats,
                     window=self.window, hop=int(self.metadata['hop']),
                     sample_rate=int(self.metadata.get('sample_rate', 16000)),
                     label_rate=int(self.metadata.get('label_rate', 25)), dataset=self.name)

  def task_indices(self, tasks: Sequence[str]) -> list[int]:
    missing = [t for t in tasks if t not in self.tasks]
    if missing:
      raise CorpusError(f'{self.name} has no task {missing}; its tasks are {list(self.tasks)}')
    return [self.tasks.index(t) for t in tasks]


def open_corpus(dataset: str, data_dir: str) -> Corpus:
  """Opens a dataset prepared by `python -m launch.prepare --dataset=SPEC` (see `DatasetSpec`).

  Raises:
    CorpusError: it is not prepared there (the message gives the exact command that prepares
      it), or its metadata is incomplete.
  """
  import tensorflow_datasets as tfds  # heavy import: only where a dataset is read
  spec = DatasetSpec.parse(dataset)
  name = spec.tfds_name
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    problem = 'is a file, not a folder' if os.path.exists(data_dir) else 'does not exist'
    raise CorpusError(f'data_dir {data_dir} {problem}; prepare the dataset there first: '
                      f'python -m launch.prepare --dataset={spec} --data_dir={data_dir}')
  prepare = f'python -m launch.prepare --dataset={spec} --data_dir={data_dir}'
  config_dir = os.path.join(data_dir, spec.dataset, spec.config_name)
  if not os.path.isdir(config_dir):
    raise CorpusError(f'{spec} is not prepared under {data_dir}; prepare it first: {prepare}')
  # Only older versions there: refused by name before TFDS tries to read them (it may need
  # TensorFlow to read another version's folder).
  versions = [name for name in os.listdir(config_dir) if re.fullmatch(r'\d+\.\d+\.\d+', name)]
  if versions and all(_version(v) < _version(OLDEST_READABLE_VERSION) for v in versions):
    newest = max(versions, key=_version)
    raise _older_version(os.path.join(config_dir, newest), newest, prepare)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    sources = tfds.data_source(name, data_dir=data_dir)
  except Exception as error:  # TFDS raises several types for "not there" and "damaged"
    message = str(error).strip().split('\n')[0][:200]
    raise CorpusError(f'{os.path.join(data_dir, spec.dataset, spec.config_name)}: the prepared '
                      f'dataset {spec} cannot be read ({type(error).__name__}: {message}); '
                      f'delete that folder and prepare it again: {prepare}') from None
  if builder.version < OLDEST_READABLE_VERSION:
    raise _older_version(os.fspath(builder.data_dir), builder.version, prepare)
  metadata = dict(builder.info.metadata or {})
  required = ('tasks', 'modalities', 'window', 'hop', 'stats', 'recordings', 'labelled_splits')
  missing = [key for key in required if key not in metadata]
  if missing:
    raise CorpusError(f'{name} under {data_dir} lacks metadata {missing}: prepare it again: '
                      f'{prepare}')
  folder = os.fspath(builder.data_dir)
  return Corpus(name=name, data_dir=data_dir, metadata=metadata,
                sources={split: _CheckedSource(source, folder, split, prepare)
                         for split, source in sources.items()},
                spec=str(spec))


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split('.'))


def _older_version(folder: str, version, prepare: str) -> CorpusError:
  return CorpusError(f'{folder}: prepared by an older version of ccc-jax (dataset version '
                     f'{version}; this one reads {OLDEST_READABLE_VERSION} and later, which store '
                     f'the audio as 16-bit PCM); prepare it again: {prepare}')


class _CheckedSource:
  """A split's random-access source whose read errors name the damaged files and the fix.

  ArrayRecord reports a damaged shard as a bare `RuntimeError` ("Corrupted Riegeli/records
  file ..."), without the file's name; training and evaluation read through this instead.
  """

  def __init__(self, source, folder: str, split: str, prepare: str):
    self._source, self._folder, self._split, self._prepare = source, folder, split, prepare

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except RuntimeError as error:
      shards = sorted(name for name in os.listdir(self._folder)
                      if f'-{self._split}.array_record' in name)
      raise CorpusError(
          f'{os.path.join(self._folder, shards[0] if len(shards) == 1 else "")}: the prepared '
          f'{self._split} split is damaged (window {index}: {str(error)[:120]}); delete '
          f'{self._folder} and prepare it again: {self._prepare}') from None


def input_stats(corpus_stats: dict[str, Any], recording_stats: dict[str, Any] | None,
                recording_norm: Sequence[str]) -> dict[str, Any]:
  """The statistics one recording's inputs are normalised with: the training split's, except
  for the `recording_norm` inputs, which use the recording's own (`features.recording_stats`)."""
  if not recording_norm:
    return corpus_stats
  return {**corpus_stats, **{name: recording_stats[name] for name in recording_norm}}


def normalise(example: dict[str, np.ndarray], stats: dict[str, Any],
              modalities: Sequence[str]) -> dict[str, np.ndarray]:
  """Z-normalises the model inputs with `stats` (the training split's, or `input_stats`);
  returns only `modalities`. Stored int16 audio is decoded first (`audio_io.from_pcm16`); float
  audio (inference's, put on the same 16-bit grid by `audio_io.as_stored`) is taken as it is."""
  return model_inputs(example, normalisation(stats, modalities), np)


def normalisation(stats: dict[str, Any], modalities: Sequence[str]) -> dict[str, dict]:
  """Per modality, the float32 `mean` and `inverse_std` (of the std floored at 1e-6) that
  `model_inputs` applies.

  A multiplication by the inverse, not a division by the std: float32 multiplication is
  correctly rounded on every backend, division is not (jitted on XLA:CPU, jax 0.10.2, 26% of
  float32 quotients differed from numpy's by one unit in the last place), and the
  device-resident path must give the host pipeline's inputs bit for bit.
  """
  return {name: {'mean': np.asarray(stats[name]['mean'], np.float32),
                 'inverse_std': np.float32(1) / np.maximum(
                     np.asarray(stats[name]['std'], np.float32), np.float32(1e-6))}
          for name in modalities}


def model_inputs(stored: dict[str, Any], norms: dict[str, dict], xp=np) -> dict[str, Any]:
  """The model's inputs from windows as stored: each modality of `norms` as float32,
  z-normalised with `normalisation`'s values. `xp` is numpy (the host pipeline, evaluation,
  inference) or jax.numpy (the device-resident training data, after the gather): the same
  float32 operations, so the same values bit for bit. Where a stored form needs decoding (say
  int16 PCM), it goes here, once for both."""
  return {name: (_decoded(stored[name], xp) - norm['mean']) * norm['inverse_std']
          for name, norm in norms.items()}


def _decoded(value, xp):
  """A stored input as float32: int16 audio decoded (`audio_io.from_pcm16`), anything else cast."""
  if value.dtype == np.int16:
    return audio_io.from_pcm16(value)
  return xp.asarray(value, xp.float32)


class _TrainExample(grain.transforms.Map):
  """Selects the model's inputs and tasks from a stored window and normalises them."""

  def __init__(self, stats, modalities, task_indices, recording_norms=None):
    self.norms = normalisation(stats, modalities)
    # Recording id -> its `normalisation` (`model.recording_norm`); None: the training split's.
    self.recording_norms = recording_norms
    self.modalities, self.task_indices = tuple(modalities), list(task_indices)

  def map(self, example):
    norms = self.norms
    if self.recording_norms is not None:
      norms = self.recording_norms[_text(example['recording'])]
    return training_inputs(stored_window(example, self.modalities, self.task_indices), norms, np)


def stored_window(example: dict[str, Any], modalities: Sequence[str],
                  task_indices: Sequence[int]) -> dict[str, np.ndarray]:
  """What training keeps of a stored window: `modalities` as stored, `labels` of the run's
  tasks and `mask` (float32)."""
  window = {name: np.asarray(example[name]) for name in modalities}
  window['labels'] = np.asarray(example['labels'], np.float32)[..., list(task_indices)]
  window['mask'] = np.asarray(example['mask'], np.float32)
  return window


def training_inputs(stored: dict[str, Any], norms: dict[str, dict], xp=np) -> dict[str, Any]:
  """A training batch (or window) from `stored_window`s: `model_inputs`, labels and mask."""
  return {**model_inputs(stored, norms, xp), 'labels': stored['labels'], 'mask': stored['mask']}


def recording_norms(corpus: Corpus, split: str, modalities: Sequence[str],
                    recording_norm: Sequence[str]) -> dict[str, dict[str, dict]]:
  """Recording id -> the `normalisation` its windows get: the training split's statistics,
  except for the `recording_norm` inputs, which use the recording's own (`input_stats`)."""
  return {name: normalisation(input_stats(corpus.stats, own, recording_norm), modalities)
          for name, own in corpus.recording_stats(split).items()}


def train_dataset(corpus: Corpus, *, tasks: Sequence[str], modalities: Sequence[str],
                  global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1, recording_norm: Sequence[str] = ()) -> grain.MapDataset:
  """This process's batches of the shuffled, endlessly repeated training split (inputs
  normalised per recording where `recording_norm` says)."""
  source = corpus.source('train')
  _check_batch(corpus, len(source), global_batch, process_count)
  per_recording = (recording_norms(corpus, 'train', modalities, recording_norm)
                   if recording_norm else None)
  dataset = (_shuffled(grain.MapDataset.source(source), seed)
             .map(_TrainExample(corpus.stats, modalities, corpus.task_indices(tasks),
                                per_recording)))
  return _process_batches(dataset, global_batch, process_index, process_count)


class WindowOrder:
  """The training windows' numbers in `train_dataset`'s order, for the device-resident path.

  `batch(j)` is the int32 `[local_batch]` window numbers of this process's part of global batch
  `j`: elements `[jB + p b, jB + (p + 1) b)` of the shuffled, repeated stream (`b = B / P`), as
  `train_dataset` batches and slices it. The stream is grain's own: the same `shuffle(seed)`
  and `repeat()` over the window numbers instead of the windows, taken one whole epoch at a
  time (grain's index shuffle costs about 10-100 us a window in Python, too slow to run per
  step ahead of an accelerator), the next epoch computed in a background thread meanwhile.
  """

  def __init__(self, corpus: Corpus, *, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    self.count = len(corpus.source('train'))
    _check_batch(corpus, self.count, global_batch, process_count)
    self.global_batch, self.local_batch = global_batch, global_batch // process_count
    self.offset = process_index * self.local_batch
    self._epochs = _shuffled(grain.MapDataset.range(self.count), seed).batch(self.count)
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='window_order')
    self._cache: dict[int, concurrent.futures.Future] = {}

  def _epoch(self, epoch: int) -> np.ndarray:
    self._epoch_ahead(epoch)
    return self._cache[epoch].result()

  def batch(self, step: int) -> np.ndarray:
    start = step * self.global_batch + self.offset
    stop = start + self.local_batch
    first, last = start // self.count, (stop - 1) // self.count
    stream = np.concatenate([self._epoch(e) for e in range(first, last + 1)])
    for epoch in [e for e in self._cache if e < first]:
      del self._cache[epoch]
    self._epoch_ahead(last + 1)
    return stream[start - first * self.count:stop - first * self.count]

  def _epoch_ahead(self, epoch: int) -> None:
    if epoch not in self._cache:
      self._cache[epoch] = self._pool.submit(
          lambda: np.asarray(self._epochs[epoch], np.int32))


def _shuffled(dataset: grain.MapDataset, seed: int) -> grain.MapDataset:
  # Shuffled before repeat: each epoch is shuffled anew (grain seeds epoch e with seed + e).
  return dataset.shuffle(seed=seed).repeat()


def _process_batches(dataset: grain.MapDataset, global_batch: int, process_index: int,
                     process_count: int) -> grain.MapDataset:
  # Global batch j is elements [jB, (j+1)B); process p's part of it is local batch jP + p.
  local_batch = global_batch // process_count
  return dataset.batch(local_batch, drop_remainder=True)[process_index::process_count]


def _check_batch(corpus: Corpus, count: int, global_batch: int, process_count: int) -> None:
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} not divisible by {process_count} processes')
  if count < global_batch:
    raise CorpusError(f'{corpus.name} train split has {count} windows, fewer than the '
                      f'global batch {global_batch}')


def train_iterator(dataset: grain.MapDataset, *, num_workers: int = 0,
                   prefetch: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator (state via get_state/set_state, or grain's Orbax handler)."""
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=2 if num_workers == 0 else 1, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(iter_dataset)


def read_train_split(corpus: Corpus, tasks: Sequence[str],
                     modalities: Sequence[str]) -> dict[str, np.ndarray]:
  """Every training window's `stored_window`, stacked in storage order `[windows, ...]`, and
  `recording_index` (int32 `[windows]`: its recording's place in `sorted(corpus.recordings(
  'train'))`, for `recording_normalisation`): what the device-resident path uploads once."""
  source = corpus.source('train')
  task_indices = corpus.task_indices(tasks)
  first = stored_window(source[0], modalities, task_indices)
  split = {name: np.empty((len(source),) + value.shape, value.dtype)
           for name, value in first.items()}
  split['recording_index'] = np.empty((len(source),), np.int32)
  places = {name: index for index, name in enumerate(sorted(corpus.recordings('train')))}
  for index in range(len(source)):
    example = source[index]
    for name, value in stored_window(example, modalities, task_indices).items():
      split[name][index] = value
    split['recording_index'][index] = places[_text(example['recording'])]
  return split


def recording_normalisation(corpus: Corpus, modalities: Sequence[str],
                            recording_norm: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
  """For the device-resident path: per `recording_norm` modality, `normalisation`'s `mean` and
  `inverse_std` of every training recording, stacked `[recordings, ...]` in sorted id order
  (`read_train_split`'s `recording_index`)."""
  per_recording = recording_norms(corpus, 'train', modalities, recording_norm)
  ordered = [per_recording[name] for name in sorted(corpus.recordings('train'))]
  return {name: {key: np.stack([norms[name][key] for norms in ordered])
                 for key in ('mean', 'inverse_std')}
          for name in recording_norm}


def train_split_bytes(corpus: Corpus, tasks: Sequence[str], modalities: Sequence[str]) -> int:
  """The bytes `read_train_split` would hold, from the first window's sizes (windows have one
  shape), without reading the split."""
  source = corpus.source('train')
  first = stored_window(source[0], modalities, corpus.task_indices(tasks))
  recording_index = np.dtype(np.int32).itemsize
  return len(source) * (sum(value.nbytes for value in first.values()) + recording_index)


def gather_windows(resident: dict[str, Any], ids: dict[str, Any]) -> dict[str, Any]:
  """A training batch gathered from the device-resident split (a per-device program).

  `resident`: `{'windows': read_train_split(...), 'norms': normalisation(...),
  'recording_norms': recording_normalisation(...)}` as device arrays; `ids`: `index`
  (`[seeds, batch]` window numbers from `WindowOrder`), `seed` and
  `example` (from `train.identify_examples`). Returns what the host pipeline's batch holds, the
  same values bit for bit: the windows are gathered as stored, then `training_inputs` decodes
  and normalises them with the same float32 operations.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  stored = {name: value[ids['index']] for name, value in resident['windows'].items()}
  recording = stored.pop('recording_index')  # [seeds, batch]
  norms = dict(resident['norms'])
  for name, table in resident['recording_norms'].items():
    # Each window's recording's values, with a unit axis to broadcast over its samples or rows.
    norms[name] = {key: jnp.expand_dims(value[recording], 2) for key, value in table.items()}
  return {**training_inputs(stored, norms, jnp), 'seed': ids['seed'],
          'example': ids['example']}


def iterate_split(corpus: Corpus, split: str, batch_size: int, modalities: Sequence[str],
                  tasks: Sequence[str] | None = None, recording_norm: Sequence[str] = ()):
  """Every window of a split in storage order, in batches padded to `batch_size`, normalised
  per recording where `recording_norm` says.

  Yields `(inputs, info)`: normalised inputs (plus `labels`, `mask` when `tasks` is given), and
  `info` with `recording` (str per window), `start`, and `valid` (False for padding windows).
  """
  source = corpus.source(split)
  task_indices = None if tasks is None else corpus.task_indices(tasks)
  per_recording = (recording_norms(corpus, split, modalities, recording_norm)
                   if recording_norm else None)
  for begin in range(0, len(source), batch_size):
    indices = list(range(begin, min(begin + batch_size, len(source))))
    examples = [source[i] for i in indices]
    valid = np.array([True] * len(examples) + [False] * (batch_size - len(examples)))
    examples += [examples[-1]] * (batch_size - len(examples))
    stacked = {key: np.stack([np.asarray(e[key]) for e in examples]) for key in
               list(modalities) + ['labels', 'mask', 'start']}
    if per_recording is None:
      inputs = normalise(stacked, corpus.stats, modalities)
    else:  # window by window, each with its recording's statistics
      rows = [model_inputs({name: stacked[name][i] for name in modalities},
                           per_recording[_text(e['recording'])], np)
              for i, e in enumerate(examples)]
      inputs = {name: np.stack([row[name] for row in rows]) for name in modalities}
    if task_indices is not None:
      inputs['labels'] = stacked['labels'][..., task_indices].astype(np.float32)
      inputs['mask'] = stacked['mask'].astype(np.float32)
    info = {'recording': [_text(e['recording']) for e in examples],
            'start': stacked['start'].astype(np.int64), 'valid': valid}
    yield inputs, info


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)



class SeedIterators:
  """One training iterator per seed (each with its own data order), yielding stacked batches.

  `next()` gives arrays shaped `[seeds, local_batch, ...]`. The state is the JSON list of the
  iterators' states, in the bytes form grain's Orbax handler saves per process.
  """

  def __init__(self, iterators: Sequence[grain.DatasetIterator]):
    self.iterators = list(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self.iterators]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self.iterators):
      raise CorpusError(f'checkpoint holds {len(states)} data iterators, the run has '
                        f'{len(self.iterators)} seeds')
    for it, s in zip(self.iterators, states):
      it.set_state(s)

  @staticmethod
  def state_at(step: int, num_seeds: int) -> bytes:
    """The state `get_state` gives after `step` batches (iterators without workers): what a
    checkpoint of the device-resident path saves, so that the host path resumes from it."""
    return json.dumps([{'next_index': int(step)}] * num_seeds).encode()

  def start_prefetch(self) -> None:
    for it in self.iterators:
      if hasattr(it, 'start_prefetch'):
        it.start_prefetch()
