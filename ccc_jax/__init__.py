"""ccc-jax: multimodal continuous emotion recognition with correlation losses in JAX/Flax.

Modules, each with one job (imports point downward through this list):

- `errors`, `config` (the typed run record and the variant syntax), `files` (atomic writes),
  `host_memory` (the allocator and dispatch settings that keep XLA:CPU's buffers between calls);
- `losses`, `metrics` (the numbers), `report` (markdown tables), `plots`;
- `audio_io`, `features`, `egemaps` (openSMILE's eGeMAPS LLDs), `formats` (CSV tables),
  `windows`;
- `models`, `sharding` (device layout), `input_pipeline` (prepared corpora, grain);
- `checkpoints` (the checkpoint layout, restore), `postprocess` (tuning and its file),
  `streaming` (causal runs, live: `StreamingPredictor`), `evaluation` (scoring a split), `train`,
  `inference` (the `Predictor`), `experiments`.

For using a trained model (on CPU, `ccc_jax.host_memory.keep_freed_memory()` first: see there):

    predictor = ccc_jax.Predictor.load('runs/synthetic')
    traces = predictor.predict(audio, sample_rate=16000)     # [frames, tasks] at 25 Hz

    stream = ccc_jax.StreamingPredictor.load('runs/causal')  # a run with the causal variant
    frames = stream.push(chunk)                              # the frames that became final
"""

import importlib

# Loaded on first use, so `from ccc_jax import losses` does not import Orbax, grain and TFDS.
_LAZY = {
    'Predictor': 'ccc_jax.inference',
    'StreamingPredictor': 'ccc_jax.streaming',
    'restore_model': 'ccc_jax.checkpoints',
    'evaluate_split': 'ccc_jax.evaluation',
    'train_and_evaluate': 'ccc_jax.train',
    'RunConfig': 'ccc_jax.config',
}

_MODULES = ('audio_io', 'checkpoints', 'config', 'egemaps', 'errors', 'evaluation',
            'experiments', 'features', 'files', 'formats', 'host_memory', 'inference',
            'input_pipeline', 'losses', 'metrics', 'models', 'plots', 'postprocess', 'report',
            'sharding', 'streaming', 'train', 'windows')


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  if name in _MODULES:  # `ccc_jax.features` works without `import ccc_jax.features`
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = list(_LAZY)
