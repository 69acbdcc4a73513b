"""Shared defaults and the variants of the per-corpus config files.

A config file's `get_config(arg)` takes variants after a colon, in the one variant syntax of
`ccc_jax.config.parse_variants` (comma-separated `NAME` or `NAME=VALUE`):
`--config=launch/configs/synthetic.py:stl=valence,mse,audio_only`. Every variant is a plain edit
of the config, listed in `VARIANTS` (or a file's own table) with what it does. The defaults are
those of `ccc_jax.config.RunConfig`; the launch scripts turn the result into that typed record.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from ccc_jax import config as run_config

Variant = tuple[Callable[[ml_collections.ConfigDict, str | None], None], str]


def base_config() -> ml_collections.ConfigDict:
  """The defaults of `RunConfig` as a ConfigDict (so `--config.FIELD=VALUE` overrides work),
  with what every corpus measured better with (BUILD_NOTES.md "Generalisation"): acoustic inputs
  normalised per recording, and the raters' 2 s reaction delay learned in the loss."""
  config = ml_collections.ConfigDict(dataclasses.asdict(run_config.RunConfig()))
  config.model.recording_norm = ('audio', 'logmel')
  config.model.label_delay = 50
  return config


def regularise_for_a_few_speakers(config: ml_collections.ConfigDict) -> None:
  """What the RECOLA-sized synthetic corpus (9 training speakers) measured better with
  (BUILD_NOTES.md "Generalisation"): dropout, modality dropout and waveform augmentation; for
  the corpora of that size (the `small` variant, RECOLA, CreativeIT)."""
  config.model.dropout = 0.2
  config.model.modality_dropout = 0.2
  config.augment.gain_db = 6.0
  config.augment.noise_snr_db = (10.0, 30.0)
  config.augment.shift_ms = 5.0


def _needs(name: str, value: str | None, what: str) -> str:
  if not value:
    raise run_config.ConfigError(f'variant {name} needs a value: {name}={what}')
  return value


def _no_value(name: str, value: str | None) -> None:
  if value is not None:
    raise run_config.ConfigError(f'variant {name} takes no value, got {name}={value}')


def _stl(config, task):
  task = _needs('stl', task, 'TASK')
  if task not in config.tasks:
    raise run_config.ConfigError(f'stl={task}: the config has tasks {tuple(config.tasks)}')
  config.tasks = (task,)


def _setter(name: str, **fields) -> Callable:
  def edit(config, value):
    _no_value(name, value)
    for key, new in fields.items():
      target = config
      *parents, leaf = key.split('.')
      for parent in parents:
        target = target[parent]
      target[leaf] = new
  return edit


def _egemaps(config, value):
  """The paper's "extracted features" as openSMILE's eGeMAPS LLDs instead of our log-mel."""
  _no_value('egemaps', value)
  modalities = tuple(config.model.modalities)
  if 'logmel' not in modalities:
    raise run_config.ConfigError(f'variant egemaps replaces logmel, but model.modalities is '
                                 f'{modalities}')
  config.model.modalities = tuple('egemaps' if m == 'logmel' else m for m in modalities)


def _seeds(config, count):
  count = _needs('seeds', count, 'N')
  if not count.isdigit() or int(count) < 1:
    raise run_config.ConfigError(f'seeds={count}: expected a positive whole number')
  config.seeds = tuple(range(int(count)))


VARIANTS: dict[str, Variant] = {
    'stl': (_stl, 'single-task learning: stl=TASK trains one task'),
    'mse': (_setter('mse', loss='mse'), 'MSE loss instead of CCC'),
    'pcc': (_setter('pcc', loss='pcc'), 'PCC loss instead of CCC'),
    'ccc': (_setter('ccc', loss='ccc'), 'CCC loss (the default)'),
    'audio_only': (_setter('audio_only', **{'model.modalities': ('audio', 'logmel')}),
                   'audio branches only (raw + log-mel)'),
    'mocap_only': (_setter('mocap_only', **{'model.modalities': ('mocap',)}),
                   'mocap branch only'),
    'raw_audio_only': (_setter('raw_audio_only', **{'model.modalities': ('audio',)}),
                       'raw-waveform branch only'),
    'egemaps': (_egemaps, 'eGeMAPS LLDs (openSMILE) instead of log-mel beside the raw audio; '
                          'after audio_only: raw audio + eGeMAPS'),
    'egemaps_only': (_setter('egemaps_only', **{'model.modalities': ('egemaps',)}),
                     'eGeMAPS branch only'),
    'tcn': (_setter('tcn', **{'model.temporal': 'tcn'}),
            'dilated temporal convolutions instead of the bidirectional GRU'),
    'causal': (_setter('causal', **{'model.causal': True, 'model.temporal': 'gru',
                                    # what needs the whole recording or looks ahead: off
                                    'model.recording_norm': (), 'model.label_delay': 0}),
               'causal model (sees only the past; unidirectional GRU): can be streamed live '
               'with launch.stream'),
    'bf16': (_setter('bf16', **{'model.compute_dtype': 'bfloat16'}),
             'mixed precision: layers compute in bfloat16, parameters, optimiser and loss '
             'moments stay float32 (pays on GPU/TPU, slower on CPU)'),
    'pmap': (_setter('pmap', parallel='pmap'), 'literal jax.pmap train step'),
    'seeds': (_seeds, 'seeds=N trains seeds 0..N-1 together'),
}


def apply_variants(config: ml_collections.ConfigDict, arg: str | None,
                   extra: dict[str, Variant] | None = None) -> ml_collections.ConfigDict:
  """Applies the variants in `arg`, in order; `extra` are the config file's own variants."""
  table = {**VARIANTS, **(extra or {})}
  for name, value in run_config.parse_variants(arg, 'config variants'):
    if name not in table:
      raise run_config.unknown_name('variant', name, table, 'config')
    table[name][0](config, value)
  return config


def describe_variants(extra: dict[str, Variant] | None = None) -> str:
  """One line per variant: `name: what it does` (for --help texts and the README test)."""
  return '\n'.join(f'{name}: {text}' for name, (_, text) in {**VARIANTS, **(extra or {})}.items())
