"""The command line: a user's mistake ends in one line, with the fix."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(*args, env=None):
  environment = {**os.environ, **(env or {})}
  environment.pop('IRSTD_TRACEBACK', None)
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=environment)


@pytest.mark.parametrize('args, expected', [
    (['--config.optimizer.learnin_rate=1'], 'Did you mean "learning_rate"'),
    (['--config.input.batch_size=3'], 'must be a multiple of the 4 devices'),
    (['--workdir=/dev/null/run'], 'Not a directory: /dev/null/run'),
])
def test_main_mistakes_end_in_one_line(tmp_path, args, expected):
  flags = {'--workdir': f'--workdir={tmp_path / "run"}'}
  for arg in args:
    flags[arg.split('=')[0]] = arg
  result = run('irstd_jax.main', '--config=configs/ganet.py:quick', *flags.values(),
               env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error: ')]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert 'Traceback' not in result.stderr


def test_missing_config_file_and_argument_and_dataset_build(tmp_path):
  missing = run('irstd_jax.main', '--config=configs/nope.py', f'--workdir={tmp_path}')
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines() == [
      'Error: --config: no file configs/nope.py (run from the repository root, or give the '
      'path of a config file such as configs/ganet.py).']
  argument = run('irstd_jax.main', '--config=configs/ganet.py:quick,dataset=irstd_folder',
                 f'--workdir={tmp_path}')
  assert argument.returncode == 1 and 'Traceback' not in argument.stderr
  assert "quick trains on the offline synthetic data" in argument.stderr
  build = run('irstd_jax.datasets.build', 'sirst_v1', f'--source_dir={tmp_path / "none"}',
              f'--data_dir={tmp_path / "tfds"}')
  assert build.returncode == 1 and 'Traceback' not in build.stderr
  assert 'is not a folder. Fix: pass the folder' in build.stderr
  traced = run('irstd_jax.main', '--config=configs/ganet.py:quick', '--workdir=/dev/null/x',
               '--verbosity=1')
  assert 'Traceback' in traced.stderr
