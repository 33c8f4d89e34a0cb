"""Shared test setup.

Four fake CPU devices so that sharding code is exercised on any machine; they
must be set before anything imports jax. Shared data (papers' fixtures, SIRST)
is found at ../shared relative to the repository root, never copied in.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=4'

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """../shared, or a skip saying why it is needed."""
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} is absent: it holds the reference fixtures and the '
                'SIRST dataset (present in the project workspace and CI).')
  return SHARED


def load_fixture(shared: pathlib.Path, name: str):
  """Loads ../shared/fixtures/<name> as a dict of numpy arrays, or skips."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = shared / 'fixtures' / name
  if not path.exists():
    pytest.skip(f'{path} is absent.')
  with np.load(path) as data:
    return {k: data[k] for k in data.files}
