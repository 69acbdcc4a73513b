"""Every config file, every variant and every config named in the docs builds a valid run record."""

import pathlib
import re

import pytest

from ccc_jax import config as run_config
from ccc_jax.errors import ConfigError
from launch import cli
from launch.configs import common
from launch.configs import creativeit
from launch.configs import recola
from launch.configs import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = {'synthetic': synthetic, 'recola': recola, 'creativeit': creativeit}
# A value for each variant that takes one.
VALUES = {'stl': 'valence', 'seeds': '3'}


def _variants(module):
  """The shared variants and the file's own (`SYNTHETIC_VARIANTS`, `RECOLA_VARIANTS`)."""
  extra = {key: value for name in dir(module) if name.endswith('_VARIANTS')
           for key, value in getattr(module, name).items()}
  return {**common.VARIANTS, **extra}


@pytest.mark.parametrize('name', FILES)
def test_every_variant_of_every_config_file_builds(name):
  module = FILES[name]
  assert cli.run_config(module.get_config()).dataset.startswith(name[:5])
  for variant in _variants(module):
    arg = f'{variant}={VALUES[variant]}' if variant in VALUES else variant
    record = cli.run_config(module.get_config(arg))
    assert run_config.RunConfig.from_mapping(record.to_json()) == record  # round-trips


def test_variants_apply_in_order_and_refuse_what_they_do_not_know():
  record = cli.run_config(synthetic.get_config('tiny,stl=valence,mse,seeds=2'))
  assert (record.dataset, record.tasks, record.loss, record.seeds) == (
      'synthetic_avd:tiny', ('valence',), 'mse', (0, 1))
  with pytest.raises(ConfigError, match="unknown variant 'tny'; did you mean 'tiny'"):
    synthetic.get_config('tny')
  with pytest.raises(ConfigError, match='stl=arousal: the config has tasks'):
    synthetic.get_config('stl=arousal')
  with pytest.raises(ConfigError, match='needs a value: stl=TASK'):
    synthetic.get_config('stl')
  with pytest.raises(ConfigError, match='takes no value'):
    synthetic.get_config('tiny=yes')


def _documented_configs():
  """`--config=launch/configs/FILE.py[:variants]` and `--config.FIELD=VALUE` of each command
  line in the README and the notes."""
  found = []
  for doc in ('README.md', 'BUILD_NOTES.md', 'datasets/README.md'):
    for line in (REPO / doc).read_text().splitlines():
      for match in re.finditer(r'--config=launch/configs/(\w+)\.py(?::([\w=,+.]+))?', line):
        overrides = re.findall(r'--config\.([\w.]+)=([^\s`]+)', line)
        if match.group(1) != 'FILE':  # the placeholder of the README's table
          found.append((doc, match.group(1), match.group(2), tuple(overrides)))
  return found


@pytest.mark.parametrize('doc, name, variants, overrides', _documented_configs())
def test_configs_in_the_docs_build(doc, name, variants, overrides):
  del doc
  config = FILES[name].get_config(variants)
  for field, value in overrides:
    target = config
    *parents, leaf = field.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = type(target[leaf])(value) if target[leaf] is not None else value
  cli.run_config(config)


def test_unknown_and_bad_fields_are_named_by_their_path():
  values = synthetic.get_config().to_dict()
  values['model']['gru_hiden'] = 3
  with pytest.raises(ConfigError, match="unknown field 'model.gru_hiden'; did you mean "
                                        "'model.gru_hidden'"):
    run_config.RunConfig.from_mapping(values)
  for field, value, message in [('num_steps', 0, 'num_steps must be positive'),
                                ('global_batch', 0, 'global_batch must be positive'),
                                ('num_steps', 'many', 'num_steps must be a whole number'),
                                ('loss', 'l1', 'loss must be one of')]:
    values = synthetic.get_config().to_dict()
    values[field] = value
    with pytest.raises(ConfigError, match=message):
      run_config.RunConfig.from_mapping(values)


def test_leaf_differences_name_the_changed_leaf():
  old = run_config.RunConfig().to_json()
  new = run_config.RunConfig().replace(
      model=run_config.ModelConfig(gru_hidden=32)).to_json()
  assert run_config.leaf_differences(old, new) == ['model.gru_hidden: 64 -> 32']


def test_dataset_specs_name_prepared_configs():
  spec = run_config.DatasetSpec.parse('synthetic_avd:tiny,window=150')
  assert (spec.tfds_name, str(spec)) == ('synthetic_avd/tiny_window-150',
                                         'synthetic_avd:tiny,window=150')
  assert run_config.DatasetSpec.parse('recola').tfds_name == 'recola/default'
  assert run_config.DatasetSpec.parse('synthetic_avd/tiny') == run_config.DatasetSpec.parse(
      'synthetic_avd:tiny')
  with pytest.raises(ConfigError, match='names configs'):
    run_config.DatasetSpec.parse('synthetic_avd:tiny,default')


def test_a_run_saved_before_compute_dtype_resumes_with_the_default():
  # Workdirs written before `model.compute_dtype` existed: their config lacks the field.
  from ccc_jax import train  # pylint: disable=g-import-not-at-top
  from ccc_jax.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  config = cli.run_config(synthetic.get_config('tiny'))
  info = run_config.ModelInfo(tasks=config.tasks, input_dims={'audio': 640}, stats={},
                              window=100, hop=50, sample_rate=16000, label_rate=25,
                              dataset=config.dataset)
  saved = {'config': config.to_json(), 'model_info': info.to_json()}
  del saved['config']['model']['compute_dtype']
  train._check_same_run(saved, config, info, 'w')  # pylint: disable=protected-access
  bf16 = cli.run_config(synthetic.get_config('tiny,bf16'))
  with pytest.raises(CheckpointError, match="model.compute_dtype: 'float32' -> 'bfloat16'"):
    train._check_same_run(saved, bf16, info, 'w')  # pylint: disable=protected-access
