"""RECOLA (AVEC 2016 package): audio only, arousal and valence. Variants: launch/configs/common.py.

    python -m launch.prepare --dataset=recola --manual_dir=/path/to/AVEC_2016 --data_dir=data
    python -m launch.train --config=launch/configs/recola.py --workdir=runs/recola
"""

from launch.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.dataset = 'recola'
  config.tasks = ('arousal', 'valence')
  config.model.modalities = ('audio', 'logmel')  # RECOLA has no mocap
  config.num_steps = 4000
  return common.apply_variants(config, arg)
