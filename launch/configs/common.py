"""Shared defaults and the variant mechanism for the per-corpus config files.

A config file's `get_config(arg)` takes big_vision-style variants after a colon, comma-separated:
`--config=launch/configs/synthetic.py:stl=valence,mse,audio_only`. Every variant is a plain
edit of the config, listed in `VARIANTS` with what it does.
"""

import ml_collections

from ccc_jax import models


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = ''
  config.data_dir = 'data'
  config.tasks = ('activation', 'valence', 'dominance')
  config.task_weights = None  # None: equal weights (mean of per-task losses)
  config.loss = 'ccc'  # 'ccc', 'pcc' or 'mse'
  config.model = models.default_model_config()
  config.seeds = (0,)  # several seeds train together, vectorised
  config.parallel = 'shard_map'  # or 'pmap'
  config.global_batch = 32
  config.num_steps = 800  # synthetic default: dev CCC plateaus from ~750 steps (BUILD_NOTES.md)
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=100, end_learning_rate_fraction=0.05, weight_decay=1e-4,
      clip_norm=1.0))
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200
  config.eval_batch = 64
  config.data_workers = 0
  config.prefetch = 4
  return config


def _stl(config, task):
  if task not in config.tasks:
    raise ValueError(f'stl={task}: the config has tasks {tuple(config.tasks)}')
  config.tasks = (task,)


def _modalities(*names):
  def edit(config, _):
    config.model.modalities = names
  return edit


def _loss(name):
  def edit(config, _):
    config.loss = name
  return edit


def _seeds(config, count):
  config.seeds = tuple(range(int(count)))


VARIANTS = {
    'stl': (_stl, 'single-task learning: stl=TASK trains one task'),
    'mse': (_loss('mse'), 'MSE loss instead of CCC'),
    'pcc': (_loss('pcc'), 'PCC loss instead of CCC'),
    'ccc': (_loss('ccc'), 'CCC loss (the default)'),
    'audio_only': (_modalities('audio', 'logmel'), 'audio branches only (raw + log-mel)'),
    'mocap_only': (_modalities('mocap',), 'mocap branch only'),
    'raw_audio_only': (_modalities('audio',), 'raw-waveform branch only'),
    'tcn': (lambda c, _: setattr(c.model, 'temporal', 'tcn'),
            'dilated temporal convolutions instead of the bidirectional GRU'),
    'pmap': (lambda c, _: setattr(c, 'parallel', 'pmap'), 'literal jax.pmap train step'),
    'seeds': (_seeds, 'seeds=N trains seeds 0..N-1 together'),
}


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  for item in filter(None, (arg or '').split(',')):
    name, _, value = item.partition('=')
    if name not in VARIANTS:
      known = ', '.join(f'{k} ({v[1]})' for k, v in VARIANTS.items())
      raise ValueError(f'unknown config variant {name!r}; known: {known}')
    VARIANTS[name][0](config, value or None)
  return config
