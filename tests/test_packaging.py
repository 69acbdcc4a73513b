"""Our `datasets/` folder and PyPI's Hugging Face `datasets` package live side by side.

Only `ccc_jax` is installed; the builders are imported from the repository root. A stand-in for
the Hugging Face package (a regular top-level `datasets` package on the path) shows that both
stay importable from where each is meant to be used.
"""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str, cwd, extra_path) -> str:
  env = {'PYTHONPATH': str(extra_path), 'PATH': '/usr/bin:/bin'}
  result = subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True,
                          text=True, check=True)
  return result.stdout.strip()


def test_repository_datasets_wins_over_an_installed_namesake(tmp_path):
  site = tmp_path / 'site'
  (site / 'datasets').mkdir(parents=True)
  (site / 'datasets' / '__init__.py').write_text('HUGGING_FACE = True\n')
  code = 'import datasets, sys; print(datasets.__file__)'
  # From the repository root (how launch scripts and tests run): ours.
  assert _python(code, REPO, site) == str(REPO / 'datasets' / '__init__.py')
  # Anywhere else: the installed package, untouched by our install.
  assert _python(code, tmp_path, site) == str(site / 'datasets' / '__init__.py')


def test_install_exposes_only_ccc_jax(tmp_path):
  code = ('import importlib.util as u; import ccc_jax; '
          'print(u.find_spec("datasets") is None, u.find_spec("launch") is None, '
          'ccc_jax.__name__)')
  assert _python(code, tmp_path, tmp_path) == 'True True ccc_jax'
