"""Model registry: `build(name, **options)` for every network in the toolbox.

Each family lives in its own module (`ganet.py`, `gglnet.py`); the registry
only maps names (and named ablation variants) to constructors and defaults.
"""

from __future__ import annotations

import importlib
from typing import Any

from flax import nnx

from irstd_jax.models.layers import apply_padded, pad_to_multiple

# name -> ("module:Class", default options). Defaults are the papers' models.
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    'ganet': ('irstd_jax.models.ganet:GaNet', {}),
    # GaNet's Table II baseline: the same U-Net without GradFormer and GFEM.
    'unet': ('irstd_jax.models.ganet:GaNet',
             {'use_gradformer': False, 'use_gfem': False}),
    'gglnet': ('irstd_jax.models.gglnet:GGLNet', {}),
}


def names() -> list[str]:
  """The registered model names."""
  return sorted(_REGISTRY)


def get_class(name: str) -> type[nnx.Module]:
  """The module class behind a registered name."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; choose one of {names()}.')
  module_name, cls_name = _REGISTRY[name][0].split(':')
  return getattr(importlib.import_module(module_name), cls_name)


def build(name: str, *, rngs: nnx.Rngs | None = None, **options) -> nnx.Module:
  """Builds a registered model.

  Args:
    name: one of `names()`.
    rngs: initialisation RNGs; `nnx.Rngs(0)` when omitted.
    **options: the model's constructor options (they override the registered
      defaults for `name`).

  Returns:
    The model, in train mode. Call `model.eval()` before inference.
  """
  cls = get_class(name)
  kwargs = {**_REGISTRY[name][1], **options}
  return cls(**kwargs, rngs=rngs if rngs is not None else nnx.Rngs(0))


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (batch-norm statistics excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ['apply_padded', 'build', 'count_params', 'get_class', 'names',
           'pad_to_multiple']
