"""ccc-jax: multimodal continuous emotion recognition with correlation losses in JAX/Flax.

Modules: `losses`, `metrics` (the numbers), `models`, `train`, `sharding` (device layout),
`input_pipeline`, `checkpoints`, `evaluation`, `postprocess`, `inference`, `experiments`,
`features`, `audio_io`, `windows`, `report`. For using a trained model:

    predictor = ccc_jax.Predictor.load('runs/synthetic')
    traces = predictor.predict(audio, sample_rate=16000)     # [frames, tasks] at 25 Hz
"""

import importlib

# Loaded on first use, so `from ccc_jax import losses` does not import Orbax, grain and TFDS.
_LAZY = {
    'Predictor': 'ccc_jax.inference',
    'restore_model': 'ccc_jax.inference',
    'evaluate_split': 'ccc_jax.inference',
    'train_and_evaluate': 'ccc_jax.train',
}


_MODULES = ('audio_io', 'checkpoints', 'evaluation', 'experiments', 'features', 'inference',
            'input_pipeline', 'losses', 'metrics', 'models', 'postprocess', 'report', 'sharding',
            'train', 'windows')


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  if name in _MODULES:  # `ccc_jax.features` works without `import ccc_jax.features`
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = list(_LAZY)
