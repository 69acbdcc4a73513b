"""USC CreativeIT (normalised layout): audio + mocap, activation/valence/dominance.

    python -m launch.prepare --dataset=creativeit --manual_dir=/path/to/creativeit --data_dir=data
    python -m launch.train --config=launch/configs/creativeit.py --workdir=runs/creativeit
Variants: launch/configs/common.py.
"""

from launch.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.dataset = 'creativeit'
  config.num_steps = 4000
  # At this size the dev CCC peaks early (a user's RECOLA run: best at step 800, flat to 4000):
  # stop after 5 evaluations (1000 steps) without a better one; the best checkpoint is kept.
  config.patience = 5
  common.regularise_for_a_few_speakers(config)
  return common.apply_variants(config, arg)
