"""irstd_jax: infrared small target detection in JAX / Flax NNX.

Importing the package is cheap and never imports torch or tensorflow;
subpackages (models, metrics, datasets, training) are imported on use.
"""

__version__ = '0.1.0'
