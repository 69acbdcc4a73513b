"""RECOLA (AVEC 2016 package): audio only, arousal and valence. Variants: launch/configs/common.py
and `RECOLA_VARIANTS` below.

    python -m launch.prepare --dataset=recola --manual_dir=/path/to/AVEC_2016 --data_dir=data
    python -m launch.train --config=launch/configs/recola.py --workdir=runs/recola
    --config=launch/configs/recola.py:egemaps        raw audio + eGeMAPS LLDs
    --config=launch/configs/recola.py:functionals    raw audio + the AVEC baseline's functionals
        (prepare --dataset=recola:egemaps_functionals first)
"""

from launch.configs import common


def _functionals(config, value):
  """The AVEC 2016 baseline's own eGeMAPS functionals (features_audio) beside the raw audio."""
  common._no_value('functionals', value)  # pylint: disable=protected-access
  config.dataset = 'recola:egemaps_functionals'
  config.model.modalities = ('audio', 'egemaps_functionals')


RECOLA_VARIANTS = {
    'functionals': (_functionals, "raw audio + the AVEC 2016 package's eGeMAPS functionals "
                                  '(dataset recola:egemaps_functionals)'),
}


def get_config(arg=None):
  config = common.base_config()
  config.dataset = 'recola'
  config.tasks = ('arousal', 'valence')
  config.model.modalities = ('audio', 'logmel')  # RECOLA has no mocap
  config.num_steps = 4000
  # At this size the dev CCC peaks early (a user's RECOLA run: best at step 800, flat to 4000):
  # stop after 5 evaluations (1000 steps) without a better one; the best checkpoint is kept.
  config.patience = 5
  common.regularise_for_a_few_speakers(config)
  return common.apply_variants(config, arg, RECOLA_VARIANTS)
