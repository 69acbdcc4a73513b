r"""Prepares a corpus once into TFDS ArrayRecord windows for training and evaluation.

    python -m launch.prepare --dataset=synthetic_avd --config=tiny --data_dir=data
    python -m launch.prepare --dataset=recola --manual_dir=/path/to/AVEC_2016 --data_dir=data
    python -m launch.prepare --dataset=recola --config=raters_mean --manual_dir=... --data_dir=data
    python -m launch.prepare --dataset=creativeit --manual_dir=/path/to/creativeit \
        --data_dir=data --set=test_actors=actor01,actor02 --set=dev_actors=actor03

Owns the command line: picking the builder and its config (a named config, optionally changed
with `--set key=value`, which gives the config a new name so that differently prepared data
never shares a folder), running it, cleaning up after a failure, and the summary. A bad input
file ends the run with one line naming the file and the problem, exit status 1, and no dataset
folder left that could be read as complete.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from ccc_jax import windows

DATASETS = ('synthetic_avd', 'recola', 'creativeit')


def _define_flags() -> None:
  """Defines the command-line flags.

  Only when run as a script: importing this module (tests, other launch scripts with their own
  --data_dir or --config) leaves the global flag registry alone.
  """
  flags.DEFINE_enum('dataset', None, DATASETS, 'Corpus to prepare.')
  flags.DEFINE_string('data_dir', None, 'Where prepared datasets are written.')
  flags.DEFINE_string('manual_dir', None, 'Folder holding the corpus files (recola, creativeit).')
  flags.DEFINE_string('config', None, "Builder config name; the builder's default if unset.")
  flags.DEFINE_multi_string(
      'set', [], 'Config field override key=value (repeatable), e.g. window=150; '
      'tuples are comma-separated.')
  flags.mark_flags_as_required(['dataset', 'data_dir'])


class ConfigError(ValueError):
  """A --config or --set that the builder does not have."""


@dataclasses.dataclass
class Summary:
  """What a prepare run produced."""
  name: str  # dataset/config, as passed to tfds.data_source
  path: str
  splits: dict[str, dict[str, float]]  # split -> recordings, windows, hours
  seconds: float
  already_prepared: bool = False  # found complete: nothing was written

  @property
  def hours(self) -> float:
    return sum(split['hours'] for split in self.splits.values())

  def describe(self) -> str:
    verb = 'Already prepared (nothing done):' if self.already_prepared else 'Prepared'
    lines = [f'{verb} {self.name} in {self.path}',
             f'{"split":<8}{"recordings":>12}{"windows":>10}{"hours":>9}']
    for split, counts in self.splits.items():
      lines.append(f'{split:<8}{counts["recordings"]:>12}{counts["windows"]:>10}'
                   f'{counts["hours"]:>9.3f}')
    if not self.already_prepared:
      per_hour = self.seconds / self.hours if self.hours else float('nan')
      lines.append(f'{self.seconds:.1f} s taken ({per_hour:.1f} s per hour of audio)')
    return '\n'.join(lines)


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
    raise ConfigError(f'unknown dataset {dataset!r}; choose from {DATASETS}')
  return module.Builder


def _parse_value(text: str, default):
  """`text` converted to the type of the field's default value."""
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected true or false, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(default, tuple):
    return tuple(item.strip() for item in text.split(',') if item.strip())
  return type(default)(text)


def make_config(builder_cls, config_name: str | None, overrides: Sequence[str] = ()):
  """The named config (default: the builder's first), with `key=value` overrides applied.

  Overrides give the config a new name (`<name>_<key>-<value>...`, other characters turned
  into '-', e.g. `default_window-150_hop-75`) so the prepared data of a changed config lands
  in its own folder.
  """
  configs = {config.name: config for config in builder_cls.BUILDER_CONFIGS}
  name = config_name or builder_cls.BUILDER_CONFIGS[0].name
  if name not in configs:
    raise ConfigError(f'{builder_cls.name} has no config {name!r}; choose from {sorted(configs)}')
  config = configs[name]
  if not overrides:
    return config
  fields = {field.name: field for field in dataclasses.fields(config)}
  changes, suffix = {}, []
  for override in overrides:
    key, separator, text = override.partition('=')
    key = key.strip()
    if not separator or key not in fields or key in ('name', 'version', 'description'):
      settable = sorted(set(fields) - {'name', 'version', 'release_notes', 'supported_versions',
                                       'description', 'tags'})
      raise ConfigError(f'--set {override!r}: expected key=value with key one of {settable}')
    try:
      changes[key] = _parse_value(text.strip(), getattr(config, key))
    except ValueError as error:
      raise ConfigError(f'--set {override!r}: {error}') from None
    suffix.append(re.sub(r'[^A-Za-z0-9]+', '-', f'{key}-{text.strip()}').strip('-'))
  config = dataclasses.replace(config, name='_'.join([name] + suffix), **changes)
  try:
    windows.window_starts(1, config.window, config.hop)
  except ValueError as error:
    raise ConfigError(f'--set: {error}') from None
  return config


def prepare_dataset(name: str, data_dir: str, manual_dir: str | None = None,
                    overrides: Sequence[str] = ()) -> Summary:
  """Prepares `name` ('dataset' or 'dataset/config', e.g. 'synthetic_avd/tiny') under `data_dir`.

  Args:
    name: a dataset of DATASETS, optionally with one of its builder configs.
    data_dir: where prepared datasets live; read it back with
      `tfds.data_source(summary.name, data_dir=data_dir)`.
    manual_dir: the corpus files (recola, creativeit).
    overrides: `key=value` config changes (see `make_config`).

  Returns:
    What was written; `summary.name` is the name to read it by.

  Raises:
    DataError: a bad input file (nothing readable is left behind).
    ConfigError: an unknown dataset, config or override.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset, _, config = name.partition('/')
  builder_cls = builder_class(dataset)
  builder_config = make_config(builder_cls, config or None, overrides)
  data_dir = os.path.abspath(data_dir)
  dataset_dir = os.path.join(data_dir, builder_cls.name)
  # The folders TFDS will create around its incomplete.* folder; removed again on failure.
  created = [path for path in (dataset_dir, os.path.join(dataset_dir, builder_config.name))
             if not os.path.exists(path)]
  builder = builder_cls(data_dir=data_dir, config=builder_config, file_format='array_record')
  already_prepared = builder.is_prepared()
  download_dir = tempfile.mkdtemp(prefix='ccc_jax_prepare_')  # TFDS wants one; none is used
  start = time.perf_counter()
  succeeded = False
  try:
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.abspath(manual_dir) if manual_dir else None))
    succeeded = True
  finally:
    shutil.rmtree(download_dir, ignore_errors=True)
    if not succeeded and created:
      # TFDS already removed its incomplete.* folder; also drop the folders it made around it.
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
  return Summary(name=f'{builder_cls.name}/{builder_config.name}', path=os.fspath(builder.data_dir),
                 splits=splits, seconds=seconds, already_prepared=already_prepared)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from ccc_jax.audio_io import DataError  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  if values.dataset != 'synthetic_avd' and not values.manual_dir:
    print(f'prepare: error: --manual_dir is required for {values.dataset}', file=sys.stderr)
    sys.exit(2)
  if values.manual_dir and not os.path.isdir(values.manual_dir):
    print(f'prepare: error: {values.manual_dir}: manual_dir folder not found', file=sys.stderr)
    sys.exit(1)
  name = values.dataset + (f'/{values.config}' if values.config else '')
  try:
    summary = prepare_dataset(name, values.data_dir, values.manual_dir, values.set)
  except (DataError, ConfigError) as error:
    print(f'prepare: error: {error}', file=sys.stderr)
    sys.exit(1)
  print(summary.describe())


if __name__ == '__main__':
  _define_flags()
  app.run(main)
