"""Synthetic multimodal corpus (the default; no download). Variants: launch/configs/common.py and
`SYNTHETIC_VARIANTS` below.

    python -m launch.train --config=launch/configs/synthetic.py --workdir=runs/synthetic
    python -m launch.train --config=launch/configs/synthetic.py:stl=valence,mse --workdir=...
    --config=launch/configs/synthetic.py:tiny    the tiny corpus, for tests and smoke runs
    --config=launch/configs/synthetic.py:small   the RECOLA-sized corpus, with early stopping
    --config=launch/configs/synthetic.py:grid    the budget of one cell of the experiment grid
        (36 runs of 3 vectorised seeds in under 30 minutes on a 2-core CPU)
"""

from launch.configs import common


def _grid(config, value):
  """36 runs of 3 vectorised seeds in under 30 minutes on 2 CPU cores: shorter training, a
  smaller batch and a narrower front end of the raw-audio branch (its first two convolutions
  are 42% of the default step, BUILD_NOTES.md "Benchmarks")."""
  common._no_value('grid', value)  # pylint: disable=protected-access
  config.global_batch = 16
  config.num_steps = 200
  config.optimizer.warmup_steps = 20
  config.model.audio_channels = (8, 16, 32, 64)
  config.log_every = 100
  config.eval_every = 200
  config.checkpoint_every = 200


def _tiny(config, value):
  """The tiny corpus and a model small enough that tests and smoke runs mostly compile."""
  common._no_value('tiny', value)  # pylint: disable=protected-access
  config.dataset = 'synthetic_avd:tiny'
  config.global_batch = 8
  config.num_steps = 20
  config.log_every = 5
  config.eval_every = 10
  config.checkpoint_every = 10
  config.eval_batch = 16
  config.model.audio_channels = (8, 8, 16, 16)
  config.model.logmel_width = 16
  config.model.egemaps_width = 16
  config.model.functionals_width = 16
  config.model.mocap_width = 16
  config.model.trunk_width = 16
  config.model.tcn_dilations = (1, 2)
  # The scan of the GRU compiles several times slower than convolutions on CPU; the tiny
  # config serves tests and smoke runs, where compiling is most of the time.
  if not config.model.causal:  # a causal model needs its forward-only GRU (`tiny,causal`)
    config.model.temporal = 'tcn'
    # Covered by every test of the tiny run (a causal model cannot use them).
    config.model.recording_norm = ('audio', 'logmel')
    config.model.label_delay = 3
  config.model.gru_hidden = 16
  config.model.head_hidden = 8
  # Every random draw of training on, so that the exactness tests (resume after SIGKILL, two
  # processes against one) cover them.
  config.model.dropout = 0.1
  config.model.modality_dropout = 0.1
  config.augment.gain_db = 3.0
  config.augment.noise_snr_db = (20.0, 40.0)
  config.augment.shift_ms = 2.0


def _small(config, value):
  """The RECOLA-sized corpus (9 training speakers of 5 minutes), with early stopping, the
  regularisation measured on it, half the default's steps and the narrower front end of the
  raw-audio branch: the same dev CCC as the default width at 400 steps, in 0.71x the time
  (BUILD_NOTES.md "Generalisation at the field's size")."""
  common._no_value('small', value)  # pylint: disable=protected-access
  config.dataset = 'synthetic_avd:small'
  config.num_steps = 400
  config.eval_every = 100
  config.patience = 5
  config.model.audio_channels = (8, 16, 32, 64)
  common.regularise_for_a_few_speakers(config)


SYNTHETIC_VARIANTS = {
    'small': (_small, 'the RECOLA-sized corpus (synthetic_avd:small: 9 training speakers of 5 '
                      'minutes), 400 steps, dev every 100, early stopping after 5 without gain, '
                      'dropout and waveform augmentation, the narrower raw-audio front end'),
    'grid': (_grid, 'the budget of one experiment-grid cell (200 steps, batch 16)'),
    'tiny': (_tiny, 'the tiny corpus (synthetic_avd:tiny) and a tiny model, 20 steps'),
}


def get_config(arg=None):
  config = common.base_config()
  config.dataset = 'synthetic_avd'
  return common.apply_variants(config, arg, SYNTHETIC_VARIANTS)
