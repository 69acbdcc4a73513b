"""The PyTorch twin of benchmarks/torch_twin.py computes what `AVDNet` computes: the same
outputs and CCC loss from the same parameters (skipped without PyTorch, the optional extra
`bench`). An independent reference for the model too: torch's GRU, convolutions and LayerNorm."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import pytest

from ccc_jax import losses
from ccc_jax import models
from tests.test_models import INPUT_DIMS, make_inputs, small_config

torch = pytest.importorskip('torch')
torch_twin = pytest.importorskip('benchmarks.torch_twin')

MODALITIES = ('audio', 'logmel', 'mocap')


def test_twin_matches_outputs_and_loss():
  config = small_config(MODALITIES, temporal='gru')
  model = models.AVDNet(config, num_tasks=3, input_dims=INPUT_DIMS, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  twin = torch_twin.AVDNet(config, 3, INPUT_DIMS)
  torch_twin.load_jax_params(twin, nnx.to_pure_dict(params))
  inputs = {m: np.asarray(v) for m, v in make_inputs().items() if m in MODALITIES}
  ours = np.asarray(jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, inputs))
  theirs = twin({m: torch.from_numpy(v) for m, v in inputs.items()})
  np.testing.assert_allclose(theirs.detach().numpy(), ours, rtol=1e-5, atol=1e-5)

  rng = np.random.default_rng(0)
  labels = rng.normal(size=ours.shape).astype(np.float32)
  mask = (rng.random(ours.shape[:2]) > 0.2).astype(np.float32)
  loss, _ = losses.loss('ccc', ours, labels, mask)
  their_loss = torch_twin.ccc_loss(theirs, torch.from_numpy(labels), torch.from_numpy(mask))
  assert float(their_loss) == pytest.approx(float(loss), rel=1e-5)
