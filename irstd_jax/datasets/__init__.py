"""IRSTD datasets as TFDS builders, built and read without TensorFlow.

`load(name, split, source_dir=..., data_dir=..., **config)` builds a dataset
on first use and returns a random-access `Source` of numpy example dicts.
Importing this package registers the builders with TFDS, so
`tfds.data_source('sirst_v1/basicirstd', split='test', data_dir=...)` works
too once a dataset is built. See README.md ("Datasets") for each dataset.
"""

from irstd_jax.datasets.base import DatasetWarning
from irstd_jax.datasets.base import IrstdBuilder
from irstd_jax.datasets.loader import builder
from irstd_jax.datasets.loader import DATA_DIR_ENV
from irstd_jax.datasets.loader import default_data_dir
from irstd_jax.datasets.loader import load
from irstd_jax.datasets.loader import names
from irstd_jax.datasets.loader import prepare
from irstd_jax.datasets.loader import Source

names()  # Registers every builder with TFDS.

__all__ = ['DatasetWarning', 'IrstdBuilder', 'Source', 'DATA_DIR_ENV',
           'builder', 'default_data_dir', 'load', 'names',
           'prepare']
