r"""Prepares a corpus once into TFDS ArrayRecord windows for training and evaluation.

    python -m launch.prepare --dataset=synthetic_avd --data_dir=data
    python -m launch.prepare --dataset=synthetic_avd:tiny --data_dir=data
    python -m launch.prepare --dataset=recola --manual_dir=/path/to/AVEC_2016 --data_dir=data
    python -m launch.prepare --dataset=recola:raters_mean --manual_dir=... --data_dir=data
    python -m launch.prepare --dataset=creativeit:test_actors=actor01+actor02,dev_actors=actor03 \
        --manual_dir=/path/to/creativeit --data_dir=data

`--dataset` is `NAME[:CONFIG][,FIELD=VALUE...]` (the variant syntax of the config files; a tuple
value joins its items with `+`). A changed field gives the prepared config its own name
(`synthetic_avd:window=150` is prepared as `synthetic_avd/default_window-150`), so differently
prepared data never shares a folder; a training config names it the same way
(`--config.dataset=synthetic_avd:window=150`). A bad input file ends the run with one line naming
the file and the problem, exit status 1, and no dataset folder left that could be read as
complete.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from launch import cli

_DATASET = flags.DEFINE_string('dataset', None, 'Dataset spec: NAME[:CONFIG][,FIELD=VALUE...].',
                               required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where prepared datasets are written.',
                                required=True)
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None,
                                  'Folder holding the corpus files (recola, creativeit).')
_WORKERS = flags.DEFINE_integer('workers', None, 'Processes preparing recordings, one '
                                'recording each (default: one per CPU).', lower_bound=1)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imported here, not above: the eGeMAPS worker processes import this module again, and
  # these imports are most of its cost.
  from datasets import prepare  # pylint: disable=g-import-not-at-top
  from launch import text  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  dataset = _DATASET.value
  if dataset.split(':')[0].split('/')[0] != 'synthetic_avd' and not _MANUAL_DIR.value:
    print(f'prepare: error: --manual_dir is required for {dataset}', file=sys.stderr)
    sys.exit(2)
  with cli.one_line_errors('prepare'):
    summary = prepare.prepare_dataset(dataset, _DATA_DIR.value, _MANUAL_DIR.value,
                                      workers=_WORKERS.value)
  print(text.preparation(summary))


if __name__ == '__main__':
  cli.run(main, 'prepare', keep_freed_memory=False)
