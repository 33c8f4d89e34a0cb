"""IRSTD datasets as TFDS builders, built and read without TensorFlow.

`load(name, split, source_dir=..., data_dir=..., **config)` builds a dataset
on first use and returns a random-access `Source` of numpy example dicts.
The first use of a TFDS-backed name below (`load`, `builder`, `names`, ...)
registers the builders with TFDS, so `tfds.data_source('sirst_v1/basicirstd',
split='test', data_dir=...)` works too once a dataset is built. See README.md
("Datasets") for each dataset.

Importing the package itself does not import tensorflow_datasets: the input
pipeline needs only `catalog` (per-dataset constants) and `imageio`, and
training imports it at the top.
"""

import importlib

# TFDS-backed names -> the submodule defining them, imported on first use.
_LAZY = {
    'DatasetWarning': 'base',
    'IrstdBuilder': 'base',
    'DATA_DIR_ENV': 'loader',
    'MissingSplitError': 'loader',
    'Part': 'loader',
    'Source': 'loader',
    'builder': 'loader',
    'default_data_dir': 'loader',
    'load': 'loader',
    'names': 'loader',
    'prepare': 'loader',
}

__all__ = ['DatasetWarning', 'IrstdBuilder', 'MissingSplitError', 'Part', 'Source', 'DATA_DIR_ENV',
           'builder', 'default_data_dir', 'load', 'names',
           'prepare']


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  # The loader imports every builder module, which registers it with TFDS.
  importlib.import_module(f'{__name__}.loader')
  value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
