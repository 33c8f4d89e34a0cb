"""Weights from and to the official PyTorch implementations.

Our modules carry the same attribute names as the official torch modules
(`nnx.List` where torch has `nn.Sequential` / `nn.ModuleList`), so the mapping
is by name; only the layouts differ:

  torch                         irstd_jax (NHWC)
  Conv2d.weight (O, I, kh, kw)  nnx.Conv.kernel (kh, kw, I, O)
  Linear.weight (out, in)       nnx.Linear.kernel (in, out)
  BatchNorm2d weight / bias /   BatchNorm2d scale / bias / mean / var
    running_mean / running_var
  a bare nn.Parameter           an nnx.Param of the same shape

Official parameters that the forward pass never uses (each model lists them as
regular expressions in `TORCH_UNUSED`) are reported and skipped.
`num_batches_tracked` is not used by torch's BatchNorm with a fixed momentum
and is skipped too.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irstd_jax import models

_Converter = Callable[[np.ndarray], np.ndarray]


def _identity(a):
  return a


def _conv_to_torch(k):
  return np.transpose(k, (3, 2, 0, 1))


def _conv_from_torch(w):
  return np.transpose(w, (2, 3, 1, 0))


def _linear_swap(w):
  return np.transpose(w, (1, 0))


# Per module type: our variable name -> (torch name, to_torch, from_torch).
_RULES: list[tuple[type, dict[str, tuple[str, _Converter, _Converter]]]] = [
    (nnx.Conv, {'kernel': ('weight', _conv_to_torch, _conv_from_torch),
                'bias': ('bias', _identity, _identity)}),
    (nnx.Linear, {'kernel': ('weight', _linear_swap, _linear_swap),
                  'bias': ('bias', _identity, _identity)}),
    (nnx.BatchNorm, {'scale': ('weight', _identity, _identity),
                     'bias': ('bias', _identity, _identity),
                     'mean': ('running_mean', _identity, _identity),
                     'var': ('running_var', _identity, _identity)}),
]


def _torch_layout(model: nnx.Module) -> dict[str, tuple[tuple, _Converter, _Converter]]:
  """Maps each torch parameter name to (our state path, to_torch, from_torch)."""
  modules = {tuple(path): node for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.Module)}
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  layout = {}
  for path, _ in nnx.to_flat_state(state):
    parent, leaf = tuple(path[:-1]), path[-1]
    torch_leaf, to_t, from_t = leaf, _identity, _identity
    for module_type, rules in _RULES:
      if isinstance(modules.get(parent), module_type):
        if leaf not in rules:
          raise ValueError(f'No torch name for {path} of {module_type.__name__}.')
        torch_leaf, to_t, from_t = rules[leaf]
        break
    name = '.'.join(str(p) for p in (*parent, torch_leaf))
    layout[name] = (tuple(path), to_t, from_t)
  return layout


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict file as official names -> numpy arrays.

  `.npz` (numpy, arrays as stored) or a torch `.pth` (needs torch; float32):
  a state dict, or a checkpoint holding one under 'state_dict', 'model' or
  'net'. DataParallel's 'module.' prefix is removed.
  """
  if str(path).endswith('.npz'):
    with np.load(path) as data:
      return {k.removeprefix('module.'): data[k] for k in data.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs torch: pip install -e ".[torch]", or pass a '
        'mapping of parameter names to numpy arrays instead.') from e
  obj = torch.load(path, map_location='cpu', weights_only=True)
  for key in ('state_dict', 'model', 'net'):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  return {k.removeprefix('module.'): v.detach().float().numpy()
          for k, v in obj.items()}


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, Any] | str | os.PathLike,
                    *, strict: bool = True) -> list[str]:
  """Copies an official torch state dict into `model` in place.

  Args:
    model: a model built by `irstd_jax.models.build` with matching options.
    state_dict: official parameter names -> arrays (numpy, torch tensors or any
      float dtype; cast to float32), or the path of a `.pth` file (needs
      torch) or of a `.npz` of the same names (e.g. `np.savez(path,
      **to_torch(model))`).
    strict: raise if a parameter of `model` is missing from `state_dict`.

  Returns:
    The official names that were skipped because the forward pass never uses
    them (`TORCH_UNUSED` of the model) or because they are bookkeeping
    (`num_batches_tracked`).
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = read_state_dict(state_dict)
  unused_patterns = [re.compile(p) for p in getattr(model, 'TORCH_UNUSED', ())]
  layout = _torch_layout(model)
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  flat = dict(nnx.to_flat_state(state))

  skipped, unknown = [], []
  for name, value in state_dict.items():
    name = name.removeprefix('module.')
    if name not in layout:
      if name.endswith('num_batches_tracked') or any(
          p.fullmatch(name) for p in unused_patterns):
        skipped.append(name)
      else:
        unknown.append(name)
      continue
    path, _, from_torch = layout[name]
    array = from_torch(np.asarray(_to_numpy(value), dtype=np.float32))
    variable = flat[path]
    expected = variable.get_value().shape  # also for an abstract model
    if array.shape != expected:
      raise ValueError(
          f'{name}: the state dict has shape {np.shape(value)} (torch layout), '
          f'the model expects {expected} ({path}). Build the model '
          'with the options the weights were trained with.')
    variable.set_value(jnp.asarray(array))
  if unknown:
    raise ValueError(
        f'{len(unknown)} parameters of the state dict have no place in '
        f'{type(model).__name__}: {unknown[:10]}... Check the model name and '
        'options (e.g. dilations, ablation switches).')
  missing = sorted(set(layout) - {k.removeprefix('module.') for k in state_dict})
  if strict and missing:
    raise ValueError(
        f'{len(missing)} parameters of {type(model).__name__} are missing from '
        f'the state dict: {missing[:10]}...')
  if skipped:
    logging.warning('Skipped %d official parameters unused by the forward pass: %s',
                 len(skipped), ', '.join(skipped[:20]))
  return skipped


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor, without importing torch
    return value.detach().float().cpu().numpy()
  return np.asarray(value)


def from_torch(name: str, state_dict: Mapping[str, Any] | str | os.PathLike,
               *, rngs: nnx.Rngs | None = None, **options) -> nnx.Module:
  """Builds model `name` with `options` and loads official torch weights into it.

  The model is built abstractly (`nnx.eval_shape`): a random initialisation
  would be overwritten, and on the CPU it costs an XLA compilation per
  parameter shape (tens of seconds for GaNet). The strict load then gives
  every parameter and statistic a value.
  """
  model = nnx.eval_shape(lambda r: models.build(name, rngs=r, **options),
                         rngs if rngs is not None else nnx.Rngs(0))
  load_state_dict(model, state_dict, strict=True)
  abstract = [path for path, v in nnx.to_flat_state(nnx.state(model))
              if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if abstract:
    raise ValueError(f'{name}: no value for {abstract[:10]} after loading; '
                     'the converter does not know these variables.')
  return model


def to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's weights as an official torch state dict (numpy float32 arrays).

  Parameters the official module has but never uses are not included; load it
  with `strict=False` into the official module.
  """
  flat = dict(nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))))
  return {name: to_t(np.asarray(flat[path][...], np.float32))
          for name, (path, to_t, _) in _torch_layout(model).items()}
