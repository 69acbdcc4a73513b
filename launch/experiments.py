r"""The paper's comparison grid: `python -m launch.experiments --config=... --grid=paper --seeds=3
--workdir=DIR`.

Trains every cell (MTL/STL x CCC/PCC/MSE loss x audio/mocap/audio+mocap, as far as the corpus
has the modalities; `--features=logmel,egemaps` runs every cell with audio once per extracted
feature set; `--grid=features` compares them alone and beside the raw audio) with N seeds
vectorised in one program per run, and writes results.md, results.json and results.png in the
workdir. Run it again to resume: finished cells are skipped,
an interrupted run resumes from its checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file (with :variants).',
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the cells and results go.', required=True)
_GRID = flags.DEFINE_enum('grid', 'paper', ['paper', 'loss', 'learning', 'features'],
                          'paper: learning x loss x modality; loss or learning: one axis only; '
                          'features: MTL CCC, (raw audio +) log-mel or eGeMAPS.')
_FEATURES = flags.DEFINE_list('features', None, 'Extracted features of the cells with audio, '
                              'an axis: logmel, egemaps or both (default: the grid\'s own).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per cell, trained together.', lower_bound=1)


def main(argv):
  del argv
  cli.quiet_logging()
  from ccc_jax import experiments  # pylint: disable=g-import-not-at-top
  from ccc_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from ccc_jax import train  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=launch/configs/synthetic.py')
  with cli.one_line_errors('experiments'):
    config = cli.run_config(_CONFIG.value)
    corpus = input_pipeline.open_corpus(config.dataset, config.data_dir)
    results = experiments.run_grid(
        config, _GRID.value, _SEEDS.value, _WORKDIR.value, corpus.modalities,
        lambda c, w: train.train_and_evaluate(c, w, corpus=corpus), features=_FEATURES.value)
  print()
  print(experiments.summarise(results, list(config.tasks)))
  print(f'written: {_WORKDIR.value}/results.md, results.json, results.png')


if __name__ == '__main__':
  cli.run(main, 'experiments')
