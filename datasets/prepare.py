"""Preparing a corpus: the builder registry, a dataset spec to a builder config, and one run of
a builder that leaves a complete dataset or none.

Owns `prepare_dataset` (what `python -m launch.prepare` runs; tests and benchmarks call it too).
A dataset is named by its spec (`ccc_jax.config.DatasetSpec`): `synthetic_avd:tiny,window=150`
is the `tiny` config with `window` changed, prepared as `synthetic_avd/tiny_window-150`. A bad
input file ends the run with a `DataError` naming the file, and no dataset folder is left that
could be read as complete. Leftovers of a prepare that was killed (TFDS's `incomplete.*` folder,
our temporary folder) are removed by the next run on the same dataset.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import os
import shutil
import tempfile
import time

from ccc_jax import files
from ccc_jax import windows
from ccc_jax.config import DatasetSpec, unknown_name
from ccc_jax.errors import ConfigError, OutputError

DATASETS = ('synthetic_avd', 'recola', 'creativeit')
_TEMPORARY_PREFIX = 'ccc_jax_prepare_'


@dataclasses.dataclass
class Summary:
  """What a prepare run produced."""
  name: str  # dataset/config, as passed to tfds.data_source
  spec: str  # the dataset spec that names it (--dataset, config.dataset)
  path: str
  splits: dict[str, dict[str, float]]  # split -> recordings, windows, hours
  seconds: float
  already_prepared: bool = False  # found complete: nothing was written

  @property
  def hours(self) -> float:
    return sum(split['hours'] for split in self.splits.values())


def builder_class(dataset: str):
  """The builder class of `dataset` (importing it registers it with TFDS)."""
  # pylint: disable=g-import-not-at-top
  if dataset == 'synthetic_avd':
    from datasets.synthetic_avd import synthetic_avd_dataset_builder as module
  elif dataset == 'recola':
    from datasets.recola import recola_dataset_builder as module
  elif dataset == 'creativeit':
    from datasets.creativeit import creativeit_dataset_builder as module
  else:
    raise unknown_name('dataset', dataset, DATASETS, 'dataset')
  return module.Builder


def _parse_value(text: str, default):
  """`text` converted to the type of the field's default value (tuples: items joined by '+')."""
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected true or false, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(default, tuple):
    return tuple(item.strip() for item in text.split('+') if item.strip())
  return type(default)(text)


_NOT_SETTABLE = ('name', 'version', 'release_notes', 'supported_versions', 'description', 'tags')


def make_config(builder_cls, spec: DatasetSpec):
  """The builder config `spec` names, with its `FIELD=VALUE` overrides applied and its name
  `spec.config_name`."""
  configs = {config.name: config for config in builder_cls.BUILDER_CONFIGS}
  if spec.config not in configs:
    raise ConfigError(f'{builder_cls.name} has no config {spec.config!r}; choose from '
                      f'{", ".join(sorted(configs))}')
  config = configs[spec.config]
  if not spec.overrides:
    return config
  fields = {field.name for field in dataclasses.fields(config)} - set(_NOT_SETTABLE)
  changes = {}
  for key, text in spec.overrides:
    if key not in fields:
      raise unknown_name('field', key, fields, f'dataset {spec}')
    try:
      changes[key] = _parse_value(text, getattr(config, key))
    except ValueError as error:
      raise ConfigError(f'dataset {spec}: {key}={text}: {error}') from None
  config = dataclasses.replace(config, name=spec.config_name, **changes)
  try:
    windows.window_starts(1, config.window, config.hop)
  except ValueError as error:
    raise ConfigError(f'dataset {spec}: {error}') from None
  return config


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_stale_temporaries() -> None:
  """Our temporary folders of prepare runs whose process is gone (named with their pid)."""
  for path in glob.glob(os.path.join(tempfile.gettempdir(), f'{_TEMPORARY_PREFIX}*')):
    pid = os.path.basename(path)[len(_TEMPORARY_PREFIX):].split('_')[0]
    if pid.isdigit() and not _process_alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)


def prepare_dataset(dataset: str, data_dir: str, manual_dir: str | None = None,
                    workers: int | None = None) -> Summary:
  """Prepares the dataset `dataset` (a spec, e.g. 'synthetic_avd:tiny') under `data_dir`.

  `workers`: processes preparing one recording each (loading, features, serialised windows)
  while this one puts the windows of a split in order into its shards; None: one per CPU.
  What is written does not depend on it.

  Returns:
    What was written; `summary.name` is the TFDS name to read it by
    (`tfds.data_source(summary.name, data_dir=data_dir)`), `summary.spec` the spec.

  Raises:
    DataError: a bad input file (nothing readable is left behind).
    OutputError: data_dir cannot be written (a file, read-only, a full disk).
    InUse: another process is preparing the same dataset there.
    ConfigError: an unknown dataset, config or field, or `workers` below 1.
  """
  if workers is not None and workers < 1:
    raise ConfigError(f'workers must be at least 1, got {workers}')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from datasets import common  # pylint: disable=g-import-not-at-top
  spec = DatasetSpec.parse(dataset)
  builder_cls = builder_class(spec.dataset)
  builder_config = make_config(builder_cls, spec)
  data_dir = os.path.abspath(data_dir)
  files.make_dirs(data_dir)
  if not os.access(data_dir, os.W_OK):
    raise OutputError(errno.EACCES, f'data_dir {data_dir}: not writable')
  dataset_dir = os.path.join(data_dir, builder_cls.name)
  config_dir = os.path.join(dataset_dir, builder_config.name)
  _remove_stale_temporaries()
  with files.exclusive(os.path.join(data_dir, f'.{builder_cls.name}.{builder_config.name}.lock'),
                       f'{spec} under {data_dir}'):
    # Holding the lock, any incomplete.* folder is a leftover of a prepare that was killed.
    for leftover in glob.glob(os.path.join(config_dir, 'incomplete.*')):
      shutil.rmtree(leftover, ignore_errors=True)
    created = [path for path in (dataset_dir, config_dir) if not os.path.exists(path)]
    builder = common.new_builder(builder_cls, builder_config, data_dir)
    builder.workers = workers
    already_prepared = builder.is_prepared()
    download_dir = tempfile.mkdtemp(prefix=f'{_TEMPORARY_PREFIX}{os.getpid()}_')  # unused
    start = time.perf_counter()
    succeeded = False
    try:
      builder.download_and_prepare(
          download_dir=download_dir,
          download_config=tfds.download.DownloadConfig(
              manual_dir=os.path.abspath(manual_dir) if manual_dir else None))
      succeeded = True
    except OSError as error:
      raise files.output_error(config_dir, error, 'cannot write the prepared dataset') from None
    finally:
      shutil.rmtree(download_dir, ignore_errors=True)
      if not succeeded:
        for leftover in glob.glob(os.path.join(config_dir, 'incomplete.*')):
          shutil.rmtree(leftover, ignore_errors=True)
        if created:  # also drop the folders TFDS made around its incomplete.* folder
          shutil.rmtree(created[0], ignore_errors=True)
  seconds = time.perf_counter() - start
  metadata = builder.info.metadata
  splits = {}
  for split, recordings in metadata['recordings'].items():
    splits[split] = {
        'recordings': len(recordings),
        'windows': builder.info.splits[split].num_examples,
        'hours': sum(recordings.values()) / metadata['label_rate'] / 3600,
    }
  return Summary(name=f'{builder_cls.name}/{builder_config.name}', spec=str(spec),
                 path=os.fspath(builder.data_dir), splits=splits, seconds=seconds,
                 already_prepared=already_prepared)
