"""Tests of causal models and live prediction (ccc_jax.streaming, launch.stream): the model sees
only the past, a stream block by block equals the model on the whole input, a recording pushed
in chunks of any size (one sample, odd sizes, another sample rate, mocap at its own rate) gives
the offline prediction of `Predictor`, the prepared split's causal prediction equals the
Predictor's on the raw signals, and the command line on a file and on piped PCM.

The models are untrained (initial parameters of the tiny config with the `causal` variant,
saved as a checkpoint): what is tested is the path of the inputs, and training would only cost
compile time.
"""

import dataclasses
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest
import soundfile

from ccc_jax import checkpoints
from ccc_jax import evaluation
from ccc_jax import formats
from ccc_jax import inference
from ccc_jax import input_pipeline
from ccc_jax import models
from ccc_jax import streaming
from ccc_jax import train
from ccc_jax.config import ConfigError, ModelConfig
from ccc_jax.errors import CheckpointError
from conftest import REPO, env_with_devices, tiny_config
from fixtures import write_recording
from test_inference import MOCAP_RATE, _session


def _causal_run(data_dir, workdir, modalities, seeds):
  """An untrained causal model of the tiny config, saved as `workdir`'s best checkpoint."""
  config = tiny_config(data_dir, seeds=seeds)
  config = config.replace(model=dataclasses.replace(
      config.model, modalities=modalities, causal=True, temporal='gru', recording_norm=(),
      label_delay=0))
  corpus = input_pipeline.open_corpus(config.dataset, str(data_dir))
  info = corpus.model_info(config.tasks, modalities)
  graphdef, params = train.init_params(config.model, info, config.seeds)
  store = checkpoints.Checkpoints(str(workdir), async_save=False)
  store.save_best(1, params, {'config': config.to_json(), 'model_info': info.to_json(),
                              'step': 1}, 0.0)
  store.close()
  return checkpoints.restore_model(str(workdir)), corpus


@pytest.fixture(scope='module')
def multimodal(tiny_data_dir, tmp_path_factory):
  """Audio, log-mel and mocap; two seeds (an ensemble)."""
  return _causal_run(tiny_data_dir, tmp_path_factory.mktemp('causal') / 'multimodal',
                     ('audio', 'logmel', 'mocap'), (0, 1))


def test_the_causal_model_sees_only_the_past_and_streams_window_by_window():
  config = ModelConfig(causal=True, modalities=('logmel', 'mocap'), logmel_width=8,
                       mocap_width=8, trunk_width=8, gru_hidden=8, head_hidden=4)
  model = models.AVDNet(config, num_tasks=3, input_dims={'logmel': 40, 'mocap': 9},
                        rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  frames, window = 24, 10
  inputs = {'logmel': rng.normal(size=(1, 4 * frames, 40)).astype(np.float32),
            'mocap': rng.normal(size=(1, frames, 9)).astype(np.float32)}
  # Compiled once each (eager calls compile op by op).
  graphdef, params = nnx.split(model)
  call = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
  stream = jax.jit(lambda p, x, h, k, v: nnx.merge(graphdef, p).stream(x, h, k, v))
  whole = np.asarray(call(params, inputs))
  later = {'logmel': inputs['logmel'].copy(), 'mocap': inputs['mocap'].copy()}
  later['logmel'][:, 60:] += 1.0  # change everything from frame 15 on
  later['mocap'][:, 15:] += 1.0
  changed = np.asarray(call(params, later))
  np.testing.assert_array_equal(changed[:, :15], whole[:, :15])
  assert np.abs(changed[:, 15:] - whole[:, 15:]).max() > 1e-3
  # Block by block (padded to 8 frames): frame t is the last output of the window of 10 frames
  # ending at t, or of frames 0..t at the start.
  history, known, done, parts = np.zeros((1, window - 1, 8), np.float32), 0, 0, []
  for n in (1, 5, 8, 3, 7):
    pad = 8 - n
    block = {'logmel': np.pad(inputs['logmel'][:, 4 * done:4 * (done + n)], ((0, 0), (0, 4 * pad), (0, 0))),
             'mocap': np.pad(inputs['mocap'][:, done:done + n], ((0, 0), (0, pad), (0, 0)))}
    out, history, known = stream(params, block, history, known, n)
    parts.append(np.asarray(out)[:, :n])
    done += n
  streamed = np.concatenate(parts, axis=1)
  # Frames 0..9: frames 0..t (the whole input is causal); from frame 10 the 10-frame window.
  expected = [whole[:, t] for t in range(window)] + [
      np.asarray(call(params, {'logmel': inputs['logmel'][:, 4 * (t + 1 - window):4 * (t + 1)],
                               'mocap': inputs['mocap'][:, t + 1 - window:t + 1]}))[:, -1]
      for t in range(window, frames)]
  np.testing.assert_allclose(streamed, np.stack(expected, axis=1), rtol=1e-5, atol=1e-6)


def test_causal_config_refuses_what_cannot_be_causal():
  with pytest.raises(ConfigError, match="temporal='gru'"):
    ModelConfig(causal=True, temporal='tcn')
  with pytest.raises(ConfigError, match='egemaps'):
    ModelConfig(causal=True, modalities=('audio', 'egemaps'))


def test_split_prediction_equals_the_predictor_on_the_raw_recording(multimodal):
  """The prepared dev split's causal prediction (windows put back together, state carried) ==
  the Predictor on the raw signals of the same recording."""
  model, corpus = multimodal
  expected = evaluation.predict_split(model.graphdef, model.params, corpus, 'dev',
                                      model.config.model, model.tasks, batch_size=4)
  (recording, entry), = expected.items()
  audio, positions = _session(recording, corpus.recordings('dev')[recording])
  got = inference.Predictor(model).predict_seeds(audio, 16000, positions, MOCAP_RATE)
  assert got.shape == entry['prediction'].shape == (2, 500, 3)
  assert np.std(got[0, :, 0]) > 1e-4  # the traces follow the input, so an error shows
  # The split stores the audio as 16-bit PCM and the Predictor puts the signal it reads on the
  # same grid (`audio_io.as_stored`); without that, the tiny model's outputs moved by 5e-3.
  np.testing.assert_allclose(got, entry['prediction'], rtol=1e-5, atol=1e-5)


def _chunk_sizes(rng, total, ones=40):
  """Random chunk sizes summing to `total`: a run of single samples, then odd and large ones."""
  sizes = [1] * ones
  while sum(sizes) < total:
    sizes.append(int(rng.choice([1, 3, 37, 641, 1999, 7919, 30011])))
  sizes[-1] -= sum(sizes) - total
  return [s for s in sizes if s > 0]


def test_a_recording_streamed_in_any_chunks_equals_its_offline_prediction(multimodal, tmp_path):
  model, _ = multimodal
  wav, mocap_csv = write_recording(tmp_path, seconds=3.3, rate=44100)  # stereo, 60 Hz mocap
  offline = inference.Predictor(model).predict_file(str(wav), str(mocap_csv))
  audio, rate = soundfile.read(wav, dtype='float32', always_2d=True)
  take = formats.read_mocap_csv(mocap_csv)
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    stream = streaming.StreamingPredictor(model, sample_rate=rate, mocap_rate=take.rate)
    times, values, pushed, mocap_sent = [], [], 0, 0
    for size in _chunk_sizes(rng, audio.shape[0]):
      pushed += size
      # Mocap arrives in its own chunks, sometimes ahead of the audio, sometimes behind it.
      due = min(int(pushed / rate * take.rate) + int(rng.integers(-3, 4)), len(take.positions))
      mocap = take.positions[mocap_sent:max(due, mocap_sent)]
      mocap_sent = max(due, mocap_sent)
      frames = stream.push(audio[pushed - size:pushed], mocap)
      times.append(frames.times)
      values.append(frames.values)
    frames = stream.push(None, take.positions[mocap_sent:])
    times.append(frames.times)
    values.append(frames.values)
    last = stream.flush()
    assert len(last) <= 2  # only the frames the last audio and mocap could not finish
    times.append(last.times)
    values.append(last.values)
    streamed = np.concatenate(values)
    assert streamed.shape == offline.shape == (83, 3)  # 3.3 s: 82.5 frames, a partial one counts
    np.testing.assert_allclose(np.concatenate(times), np.arange(83) / 25)
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=2e-5)
    assert stream.state_bytes < 64 * 1024


def test_a_bidirectional_run_is_refused_by_name(multimodal):
  model, _ = multimodal
  config = model.config
  bidirectional = dataclasses.replace(model, config=config.replace(
      model=dataclasses.replace(config.model, causal=False)))
  with pytest.raises(CheckpointError, match='bidirectional'):
    streaming.StreamingPredictor(bidirectional, mocap_rate=60.0)


def _stream_command(*args):
  return [sys.executable, '-m', 'launch.stream', *args]


def _parse(output: str):
  lines = output.strip().splitlines()
  assert lines[0] == 'time,activation,valence,dominance'
  return np.array([[float(v) for v in line.split(',')] for line in lines[1:]])


def test_command_line_streams_a_file_and_piped_pcm(multimodal, tiny_data_dir, tmp_path):
  """One audio-only causal run for both inputs (the second command finds its compiled programs
  in the persistent cache); mocap streaming is tested above, in-process."""
  env = env_with_devices(1)
  audio_only, _ = _causal_run(tiny_data_dir, tmp_path / 'audio_only', ('audio', 'logmel'), (0,))
  wav, _ = write_recording(tmp_path, seconds=2.0, rate=44100)
  done = subprocess.run(_stream_command(f'--workdir={audio_only.workdir}', f'--audio={wav}',
                                        '--fast'),
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  table = _parse(done.stdout)
  offline = inference.Predictor(audio_only).predict_file(str(wav))
  np.testing.assert_allclose(table[:, 0], np.arange(50) / 25)
  np.testing.assert_allclose(table[:, 1:], offline, atol=2e-6)

  # Raw 16-bit PCM on stdin.
  pcm = (np.sin(2 * np.pi * 220 * np.arange(24000) / 16000) * 8000).astype('<i2')
  done = subprocess.run(_stream_command(f'--workdir={audio_only.workdir}', '--stdin',
                                        '--sample_rate=16000'),
                        cwd=REPO, env=env, input=pcm.tobytes(), capture_output=True, timeout=300)
  assert done.returncode == 0, done.stderr.decode()[-2000:]
  table = _parse(done.stdout.decode())
  offline = inference.Predictor(audio_only).predict(pcm, 16000)
  assert table.shape == (38, 4)  # 1.5 s: 37.5 frames
  np.testing.assert_allclose(table[:, 1:], offline, atol=2e-6)

  # A model with mocap streamed without --mocap ends in one line.
  model, _ = multimodal
  done = subprocess.run(_stream_command(f'--workdir={model.workdir}', f'--audio={wav}'),
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and 'uses mocap' in done.stderr
  assert 'Traceback' not in done.stderr
