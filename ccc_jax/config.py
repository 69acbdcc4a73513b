"""The run record: one typed, immutable description of a run, from the config file to the
restored model.

Owns `RunConfig` (what to train and how), `ModelConfig` and `OptimizerConfig` (its parts),
`ModelInfo` (what the prepared dataset told the model: tasks, input sizes, normalisation), the
names every other module checks values against, and the one variant syntax of the command lines.

Config files are ml_collections `ConfigDict`s (absl's `--config.FIELD=VALUE` overrides work on
them); the launch scripts turn one into a `RunConfig` once, with `RunConfig.from_mapping`, which
rejects an unknown field or a bad value by its dotted name. From there on the run is the frozen
dataclass: the compile caches key on its parts, checkpoints store it as JSON next to `ModelInfo`,
and restoring gives it back typed. `leaf_differences` names the changed leaves
(`model.gru_hidden: 64 -> 32`) when a workdir is resumed with another config.

Variants (`name` or `name=value`, comma-separated) are one syntax everywhere: after the colon of
a config file (`launch/configs/synthetic.py:tiny,stl=valence`) and of a dataset spec
(`synthetic_avd:tiny,window=150`), see `parse_variants`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping

from ccc_jax.errors import ConfigError

LOSSES = ('ccc', 'pcc', 'mse')
# `logmel` and `egemaps` (openSMILE's eGeMAPSv02 LLDs) are the extracted-feature branches every
# corpus has; `egemaps_functionals` are the AVEC 2016 package's precomputed functionals (RECOLA's
# `egemaps_functionals` config only).
MODALITIES = ('audio', 'logmel', 'egemaps', 'egemaps_functionals', 'mocap')
# What a causal model (`ModelConfig.causal`) may use: features whose rows for a label frame
# depend on the signal up to the frame's end only. openSMILE's LLD windows reach up to 30 ms past
# their frame, and the AVEC functionals summarise several seconds around it.
CAUSAL_MODALITIES = ('audio', 'logmel', 'mocap')
# What `ModelConfig.recording_norm` may standardise per recording: the acoustic inputs whose
# whole-recording statistics the builders store and inference computes (eGeMAPS would need a
# second openSMILE pass over a new recording; not yet).
RECORDING_NORM_MODALITIES = ('audio', 'logmel')
TEMPORAL_MODELS = ('tcn', 'gru')
# What the model's layers compute in (`ModelConfig.compute_dtype`); parameters, optimiser state
# and the loss's moments stay float32 whatever it is.
COMPUTE_DTYPES = ('float32', 'bfloat16')
PARALLEL_MODES = ('shard_map', 'pmap')
# Where the training split is read from: 'device' (uploaded once, each batch gathered on the
# devices), 'host' (the grain pipeline), 'auto' (the devices when the split fits the budget of
# `sharding.resident_budget`). Both give the same batches.
DATA_PLACEMENTS = ('auto', 'device', 'host')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of `models.AVDNet`, sized to train in minutes on 2 CPU cores (T=100)."""
  # Which branches exist, a subset of MODALITIES.
  modalities: tuple[str, ...] = ('audio', 'logmel', 'mocap')
  # Raw-audio branch: strided 1-D convolutions from 16 kHz down to 25 Hz. The strides must
  # multiply to the samples per label frame (640), so that with SAME padding the branch yields
  # exactly T frames. The first layers run at the highest rates, so they stay narrow.
  audio_channels: tuple[int, ...] = (16, 32, 64, 64)
  audio_kernel_sizes: tuple[int, ...] = (20, 8, 8, 8)
  audio_strides: tuple[int, ...] = (10, 4, 4, 4)
  # Log-mel branch: the 4 log-mel frames (10 ms hop) of each 40 ms label frame are stacked and
  # passed through a per-frame MLP.
  logmel_frames_per_label: int = 4
  logmel_width: int = 64
  # eGeMAPS branch: the same per-frame MLP over the 4 x 25 eGeMAPS LLDs of each label frame.
  egemaps_width: int = 64
  # AVEC functionals branch: per-frame MLP over the precomputed functionals of each label frame.
  functionals_width: int = 64
  # Mocap branch: per-frame MLP over the marker features.
  mocap_width: int = 64
  # Fused per-frame representation and the temporal model over it.
  trunk_width: int = 64
  # 'gru': measured dev CCC 0.79 against 0.70 for 'tcn' at the same speed (BUILD_NOTES.md).
  temporal: str = 'gru'
  tcn_kernel_size: int = 3
  # Receptive field 1 + (kernel - 1) * sum(dilations) = 31 frames (1.24 s).
  tcn_dilations: tuple[int, ...] = (1, 2, 4, 8)
  gru_hidden: int = 64  # per direction
  gru_layers: int = 1
  # Per-task head: one hidden layer per task on top of the shared trunk.
  head_hidden: int = 32
  # Every layer sees only the past: left-padded convolutions in the raw-audio branch and a
  # unidirectional GRU (`temporal` must be 'gru'). A causal run can be streamed live
  # (`ccc_jax.streaming`); BUILD_NOTES.md "Streaming" gives the price in dev CCC.
  causal: bool = False
  # Regularisation while training (evaluation and inference are deterministic). `dropout`: on
  # each branch's embedding, the fused representation, the temporal model's output and the
  # heads' hidden layer. `modality_dropout`: the probability that a window loses one modality's
  # embedding (multimodal models; never all of them), the others scaled up to compensate.
  dropout: float = 0.0
  modality_dropout: float = 0.0
  # Inputs standardised by each recording's own mean and standard deviation instead of the
  # training split's: the speech field's per-speaker normalisation (cepstral mean and variance
  # normalisation for log-mel, level normalisation for the waveform). It removes a speaker's base
  # level and spectral tilt, which a model trained on a few speakers otherwise learns as identity
  # (BUILD_NOTES.md "Generalisation"). It needs the whole recording, so a causal model cannot.
  # Names the model lacks are ignored (a variant may drop a modality).
  recording_norm: tuple[str, ...] = ()
  # Label frames (25 Hz) by which the annotation lags what causes it: output frame i of a window
  # is trained against label frame i + label_delay (a window's first label_delay labels, whose
  # cause lies before the window, are never targets), and predictions are placed label_delay
  # frames later. 50 = 2 s, the shift of the AVEC 2018 cross-cultural baseline. Not for a causal
  # model, which already sees the past.
  label_delay: int = 0
  # What convolutions, matmuls, the GRU's recurrent matmul and the activations compute in.
  # 'bfloat16': mixed precision, with float32 parameters (the optimiser updates them in
  # float32), float32 normalisation statistics, GRU carry and outputs, and float32 loss moments.
  # It pays where bfloat16 matmuls are faster (GPU, TPU); on the 2-core CPU it is slower
  # (BUILD_NOTES.md "Step speed and mixed precision").
  compute_dtype: str = 'float32'

  def __post_init__(self):
    _require(self.modalities, 'model.modalities', 'at least one modality')
    for name in self.modalities:
      _choice(name, MODALITIES, 'model.modalities')
    if len(set(self.modalities)) != len(self.modalities):
      raise ConfigError(f'model.modalities has duplicates: {self.modalities}')
    _choice(self.temporal, TEMPORAL_MODELS, 'model.temporal')
    _choice(self.compute_dtype, COMPUTE_DTYPES, 'model.compute_dtype')
    for field in ('logmel_frames_per_label', 'logmel_width', 'egemaps_width',
                  'functionals_width', 'mocap_width', 'trunk_width',
                  'tcn_kernel_size', 'gru_hidden', 'gru_layers', 'head_hidden'):
      _positive(getattr(self, field), f'model.{field}')
    for field in ('audio_channels', 'audio_kernel_sizes', 'audio_strides', 'tcn_dilations'):
      for value in getattr(self, field):
        _positive(value, f'model.{field}')
    for field in ('dropout', 'modality_dropout'):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ConfigError(f'model.{field} must be in [0, 1), got {getattr(self, field)!r}')
    for name in self.recording_norm:
      _choice(name, RECORDING_NORM_MODALITIES, 'model.recording_norm')
    if isinstance(self.label_delay, bool) or not isinstance(self.label_delay, int) or \
        self.label_delay < 0:
      raise ConfigError(f'model.label_delay must be a whole number of label frames >= 0, got '
                        f'{self.label_delay!r}')
    if self.causal:
      if self.temporal != 'gru':
        raise ConfigError(f"model.causal needs model.temporal='gru' (a unidirectional GRU); got "
                          f'{self.temporal!r}')
      not_causal = [m for m in self.modalities if m not in CAUSAL_MODALITIES]
      if not_causal:
        raise ConfigError(f'model.causal: modalities {not_causal} are not causal (their features '
                          'look past the end of a label frame); a causal model can use '
                          f'{", ".join(CAUSAL_MODALITIES)}')
      if self.recording_norm:
        raise ConfigError('model.causal cannot use model.recording_norm: a live stream does not '
                          "know a recording's statistics before it ends")
      if self.label_delay:
        raise ConfigError('model.causal cannot use model.label_delay: a causal model already '
                          'sees the past that a delayed label reacts to')


  @property
  def recording_norm_inputs(self) -> tuple[str, ...]:
    """The inputs normalised per recording: those of `recording_norm` the model has."""
    return tuple(name for name in self.recording_norm if name in self.modalities)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warm-up and cosine decay, after global-norm gradient clipping."""
  learning_rate: float = 2e-3
  warmup_steps: int = 100
  end_learning_rate_fraction: float = 0.05
  weight_decay: float = 1e-4
  clip_norm: float = 1.0
  # Steps of the cosine decay; None: `num_steps`. Set it to make the schedule independent of
  # `num_steps`, so a run can be resumed with a larger `num_steps` and continue exactly.
  decay_steps: int | None = None

  def __post_init__(self):
    _positive(self.learning_rate, 'optimizer.learning_rate')
    _positive(self.clip_norm, 'optimizer.clip_norm')
    if self.decay_steps is not None:
      _positive(self.decay_steps, 'optimizer.decay_steps')
    if self.warmup_steps < 0 or self.weight_decay < 0 or self.end_learning_rate_fraction < 0:
      raise ConfigError('optimizer.warmup_steps, weight_decay and end_learning_rate_fraction '
                        'must not be negative')


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Waveform augmentation of the training windows' raw audio (the model's `audio` input; the
  log-mel and eGeMAPS features are prepared beforehand and stay as they are). Neutral values
  (the defaults) turn a step off. Every draw is a function of the seed, the step and the
  example's place in the global batch, so a run resumes exactly and a seed trained among others
  equals that seed trained alone."""
  gain_db: float = 0.0  # a gain drawn uniformly in [-gain_db, +gain_db] dB
  # Additive white noise at an SNR drawn uniformly in [low, high] dB; () for none.
  noise_snr_db: tuple[float, ...] = ()
  shift_ms: float = 0.0  # a circular shift of the window's waveform by up to this many ms

  def __post_init__(self):
    if self.gain_db < 0 or self.shift_ms < 0:
      raise ConfigError('augment.gain_db and augment.shift_ms must not be negative')
    if self.noise_snr_db and (len(self.noise_snr_db) != 2 or
                              self.noise_snr_db[0] > self.noise_snr_db[1]):
      raise ConfigError(f'augment.noise_snr_db must be (low, high) with low <= high, or (); got '
                        f'{self.noise_snr_db}')

  @property
  def active(self) -> bool:
    return bool(self.gain_db or self.noise_snr_db or self.shift_ms)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything that decides what a training run computes, and how it reports."""
  dataset: str = 'synthetic_avd'  # a dataset spec as `launch.prepare` takes it (`DatasetSpec`)
  data_dir: str = 'data'
  tasks: tuple[str, ...] = ('activation', 'valence', 'dominance')
  task_weights: tuple[float, ...] | None = None  # None: equal weights (mean of per-task losses)
  loss: str = 'ccc'
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  seeds: tuple[int, ...] = (0,)  # several seeds train together, vectorised
  parallel: str = 'shard_map'
  global_batch: int = 32
  num_steps: int = 800  # synthetic default: dev CCC plateaus from ~750 steps (BUILD_NOTES.md)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
  log_every: int = 50
  eval_every: int = 200
  # Early stopping: training ends once this many dev evaluations in a row found no better mean
  # dev CCC than the best (whose checkpoint is kept); None trains all `num_steps`.
  patience: int | None = None
  checkpoint_every: int = 200
  eval_batch: int = 64
  data_workers: int = 0
  prefetch: int = 4
  # One of DATA_PLACEMENTS; changes the speed only (the same batches either way), so a run may
  # be resumed with another one.
  data_placement: str = 'auto'

  def __post_init__(self):
    _require(self.tasks, 'tasks', 'at least one task')
    if len(set(self.tasks)) != len(self.tasks):
      raise ConfigError(f'tasks has duplicates: {self.tasks}')
    if self.task_weights is not None:
      if len(self.task_weights) != len(self.tasks):
        raise ConfigError(f'task_weights has {len(self.task_weights)} values for '
                          f'{len(self.tasks)} tasks {self.tasks}')
      if any(w < 0 for w in self.task_weights) or sum(self.task_weights) <= 0:
        raise ConfigError(f'task_weights must be non-negative with a positive sum, got '
                          f'{self.task_weights}')
    _choice(self.loss, LOSSES, 'loss')
    _choice(self.parallel, PARALLEL_MODES, 'parallel')
    _choice(self.data_placement, DATA_PLACEMENTS, 'data_placement')
    _require(self.seeds, 'seeds', 'at least one seed')
    if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
      raise ConfigError(f'seeds must be distinct non-negative integers, got {self.seeds}')
    for field in ('global_batch', 'num_steps', 'log_every', 'eval_every', 'checkpoint_every',
                  'eval_batch'):
      _positive(getattr(self, field), field)
    if self.patience is not None:
      _positive(self.patience, 'patience')
    if self.data_workers < 0 or self.prefetch < 0:
      raise ConfigError('data_workers and prefetch must not be negative')

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> 'RunConfig':
    """A `RunConfig` from a nested mapping (a `ConfigDict.to_dict()` or saved JSON).

    Raises:
      ConfigError: an unknown field (with the closest known name), a value of the wrong type,
        or a value a field cannot take; the message names the field by its dotted path.
    """
    return _build(cls, values, '')

  def to_json(self) -> dict[str, Any]:
    """A JSON-able nested dict that `from_mapping` turns back into an equal `RunConfig`."""
    return _plain(dataclasses.asdict(self))

  def replace(self, **changes) -> 'RunConfig':
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the prepared dataset tells a model, saved with every checkpoint: what inference needs
  besides the parameters."""
  tasks: tuple[str, ...]
  input_dims: dict[str, int]
  stats: dict[str, Any]
  window: int
  hop: int
  sample_rate: int
  label_rate: int
  dataset: str

  def to_json(self) -> dict[str, Any]:
    return _plain(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> 'ModelInfo':
    data = dict(data)
    data['tasks'] = tuple(data['tasks'])
    return cls(**data)

  @property
  def input_dims_key(self) -> tuple[tuple[str, int], ...]:
    """`input_dims` in a hashable form, for compile caches."""
    return tuple(sorted(self.input_dims.items()))


def leaf_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                     ignore: tuple[str, ...] = ()) -> list[str]:
  """`'path: old -> new'` for every leaf that differs between two nested dicts, `ignore`d paths
  left out."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  return [f'{key}: {flat_old.get(key, "(absent)")!r} -> {flat_new.get(key, "(absent)")!r}'
          for key in sorted(set(flat_old) | set(flat_new))
          if key not in ignore and flat_old.get(key) != flat_new.get(key)]


def parse_variants(text: str | None, where: str) -> list[tuple[str, str | None]]:
  """`'tiny,stl=valence'` -> `[('tiny', None), ('stl', 'valence')]`.

  The one variant syntax: comma-separated items, each `name` or `name=value`. A value that
  itself holds commas (a tuple) is written with `+` between its items (`dev_actors=a01+a02`).
  """
  items = []
  for item in filter(None, (part.strip() for part in (text or '').split(','))):
    name, separator, value = item.partition('=')
    name = name.strip()
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', name) or (separator and not value.strip()):
      raise ConfigError(f'{where}: {item!r} is not a variant; expected NAME or NAME=VALUE')
    items.append((name, value.strip() if separator else None))
  return items


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A prepared dataset named as the command lines name it: `NAME[:CONFIG][,FIELD=VALUE...]`.

  `synthetic_avd` is the builder's `default` config, `synthetic_avd:tiny` its `tiny` config, and
  `synthetic_avd:tiny,window=150` the `tiny` config with one field changed, prepared under its
  own name (`tiny_window-150`) so differently prepared data never shares a folder. The TFDS
  spelling `synthetic_avd/tiny` is accepted too.
  """
  dataset: str
  config: str = 'default'
  overrides: tuple[tuple[str, str], ...] = ()

  @classmethod
  def parse(cls, spec: str) -> 'DatasetSpec':
    spec = spec.strip()
    name, _, variants = spec.partition(':')
    name, _, tfds_config = name.partition('/')
    if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
      raise ConfigError(f'dataset {spec!r}: expected NAME or NAME:CONFIG,FIELD=VALUE,... '
                        '(e.g. synthetic_avd:tiny)')
    configs = [item for item, value in parse_variants(variants, f'dataset {spec}')
               if value is None]
    overrides = tuple((item, value) for item, value in parse_variants(variants, f'dataset {spec}')
                      if value is not None)
    if tfds_config:
      configs.insert(0, tfds_config)
    if len(configs) > 1:
      raise ConfigError(f'dataset {spec!r} names configs {configs}; name at most one')
    return cls(name, configs[0] if configs else 'default', overrides)

  @property
  def config_name(self) -> str:
    """The prepared config's name: the config, then each override (`tiny_window-150`)."""
    suffix = [re.sub(r'[^A-Za-z0-9]+', '-', f'{key}-{value}').strip('-')
              for key, value in self.overrides]
    return '_'.join([self.config] + suffix)

  @property
  def tfds_name(self) -> str:
    return f'{self.dataset}/{self.config_name}'

  def __str__(self) -> str:
    items = ([] if self.config == 'default' and self.overrides else [self.config]) + [
        f'{key}={value}' for key, value in self.overrides]
    if items == ['default']:
      return self.dataset
    return f'{self.dataset}:{",".join(items)}'


def unknown_name(kind: str, name: str, known, where: str) -> ConfigError:
  """A `ConfigError` for an unknown `name`, with the closest known one and the full list."""
  known = sorted(known)
  close = difflib.get_close_matches(name, known, n=1)
  hint = f'did you mean {close[0]!r}? ' if close else ''
  return ConfigError(f'{where}: unknown {kind} {name!r}; {hint}known: {", ".join(known)}')


# ---------------------------------------------------------------------------------------------


def _require(value, name: str, what: str) -> None:
  if not value:
    raise ConfigError(f'{name} is empty; it needs {what}')


def _choice(value, choices, name: str) -> None:
  if value not in choices:
    raise ConfigError(f'{name} must be one of {", ".join(choices)}; got {value!r}')


def _positive(value, name: str) -> None:
  if not value > 0:
    raise ConfigError(f'{name} must be positive, got {value!r}')


def _build(cls, values: Mapping[str, Any], prefix: str):
  if not isinstance(values, Mapping):
    raise ConfigError(f'{prefix.rstrip(".") or "config"} must be a group of fields, got '
                      f'{values!r}')
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  for key in values:
    if key not in fields:
      raise unknown_name('field', f'{prefix}{key}', [f'{prefix}{k}' for k in fields],
                         'config')
  kwargs = {}
  for name in fields:
    if name not in values:
      continue
    kwargs[name] = _convert(values[name], hints[name], f'{prefix}{name}')
  return cls(**kwargs)


def _convert(value, hint, name: str):
  """`value` as type `hint` (dataclass, tuple, optional, str, int, float, bool)."""
  origin = typing.get_origin(hint)
  if dataclasses.is_dataclass(hint):
    return _build(hint, value, f'{name}.')
  if origin in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
      return None
    return _convert(value, options[0], name)
  if origin is tuple:
    item_type = typing.get_args(hint)[0]
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
      value = [value]  # a single value where a tuple is expected: a 1-tuple
    return tuple(_convert(v, item_type, name) for v in value)
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f'{name} must be true or false, got {value!r}')
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      raise ConfigError(f'{name} must be a whole number, got {value!r}')
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f'{name} must be a number, got {value!r}')
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f'{name} must be text, got {value!r}')
    return value
  if hint is dict or typing.get_origin(hint) is dict:
    return dict(value)
  return value


def _plain(value):
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = tuple(value) if isinstance(value, list) else value
  return flat
