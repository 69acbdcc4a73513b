r"""Trains a model: `python -m launch.train --config=launch/configs/synthetic.py --workdir=DIR`.

Resumes from the workdir's latest checkpoint when there is one. Override any config field on the
command line (`--config.loss=pcc`, `--config.num_steps=3000`) or pick variants after a colon
(`--config=launch/configs/synthetic.py:stl=valence,mse`).

Multi-host: pass `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or
`--distributed` on a cluster that JAX auto-detects, such as Cloud TPU or SLURM). Every process
reads its own slice of the data.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (with :variants).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go.', required=True)
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-host: HOST:PORT of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process index.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Multi-host with cluster auto-detection (TPU pods, SLURM, ...).')
_HELD_OUT = flags.DEFINE_bool('held_out', True,
                              'After training, when the corpus has test labels: tune '
                              'post-processing on dev and apply it unchanged to test '
                              '(launch.evaluate, both splits), and print both.')


def main(argv):
  del argv
  cli.quiet_logging()
  import jax  # pylint: disable=g-import-not-at-top
  cli.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             _DISTRIBUTED.value)
  from ccc_jax import report  # pylint: disable=g-import-not-at-top
  from ccc_jax import train  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=launch/configs/synthetic.py')
  with cli.one_line_errors('train'):
    config = cli.run_config(_CONFIG.value)
    if jax.process_index() == 0:
      print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind} '
            f'({jax.process_count()} process(es)); dataset {config.dataset}; tasks '
            f'{config.tasks}; loss {config.loss}; modalities {config.model.modalities}',
            flush=True)
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  if jax.process_index() == 0:
    if summary['compile_seconds'] is None:
      print(f"\n{_WORKDIR.value} had already trained {summary['step']} steps")
    else:
      print(f"\ntrained to step {summary['step']} ({summary['steps_per_second']:.2f} steps/s "
            f"after {summary['compile_seconds']:.1f} s compiling)")
    if summary['stopped_early']:
      print(f"stopped early: no better dev CCC in {config.patience} evaluations")
    if summary['best_step'] is not None:
      print(f"best mean dev CCC {summary['best_dev_ccc']:.4f} at step {summary['best_step']}, "
            f"reached after {summary['seconds_to_best']:.0f} s of training "
            f"({summary['train_seconds']:.0f} s in all)")
    print(f"dev CCC at the last step ({summary['step']}):\n")
    print(report.metric_table(summary['dev'], summary['tasks']))
    # One process restores and predicts alone; with several, launch.evaluate does it after.
    if _HELD_OUT.value and summary['best_step'] is not None and jax.process_count() == 1:
      from ccc_jax import evaluation  # pylint: disable=g-import-not-at-top
      with cli.one_line_errors('train'):
        check = evaluation.held_out_check(_WORKDIR.value)
      if check is not None:
        print(f"\nbest checkpoint (step {check['dev']['step']}), concordance over all frames; "
              'post-processing tuned on dev, applied unchanged to test:\n')
        print(report.held_out_table(check, summary['tasks']))


if __name__ == '__main__':
  cli.run(main, 'train')
