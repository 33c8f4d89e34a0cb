"""The official PyTorch models, imported from the user's own checkout.

Nothing of the official code is part of this project: the user passes the
directory of a checkout of greekinRoma/Gradient-Transformer (GaNet, whose model
class is named DATransNet) or YuChuang1205/MSDA-Net (GGL-Net), and the model
class is imported from there at run time. Both repositories have a top-level
package named `model`, whose `__init__.py` imports every network of the
repository (some of them missing), so the class is imported through a
namespace package that skips that file, and the two checkouts never see each
other's modules.

greekinRoma/DATransNet has the same file, model/DATransNet/segmentation.py, but
holds the authors' later DATransNet network (other skip modules and head; its
InceptionNeXt block needs timm). A checkout of it is refused with a message
naming Gradient-Transformer (`check_checkout`); the parity fixtures, the
converter and `irstd_jax.models.ganet` follow the paper's GaNet.

The official GaNet builds constant tensors with `.cuda()` in its constructor;
on a machine without CUDA that call is made a no-op while the model is built.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import re
import sys
import types
from typing import Callable, Iterable

import numpy as np

# name -> (file that identifies the checkout, module, class, constructor kwargs
# as a function of the image size).
OFFICIAL = {
    'ganet': ('model/DATransNet/segmentation.py', 'model.DATransNet.segmentation',
              'DATransNet', lambda size: {'img_size': size}),
    'gglnet': ('model/GGL_Net/model_GGL.py', 'model.GGL_Net.model_GGL',
               'GGLNet', lambda size: {}),
}


GANET_REPOSITORY = 'https://github.com/greekinRoma/Gradient-Transformer'
GGLNET_REPOSITORY = 'https://github.com/YuChuang1205/MSDA-Net'

# Modules that the later DATransNet network's segmentation.py imports and the
# paper's GaNet does not have (greekinRoma/DATransNet after January 2025).
_LATER_DATRANSNET_MODULES = ('DATrans', 'CSPBlocks', 'Non_local')
# GaNet's GradFormer, imported by its segmentation.py.
_GANET_MODULE = 'CDCNs.Gradient_model'


def _relative_imports(path: pathlib.Path) -> list[str]:
  """The modules a file imports relatively ('from .X.Y import ...' -> 'X.Y')."""
  text = path.read_text(encoding='utf-8', errors='replace')
  return re.findall(r'^\s*from\s+\.([\w.]+)\s+import', text, flags=re.MULTILINE)


def check_checkout(name: str, root: pathlib.Path, given: str | None = None) -> None:
  """Raises a ValueError unless `root` is a checkout of `name`'s official code.

  For GaNet, a checkout of greekinRoma/DATransNet (the later network, in the
  same file) is told to use greekinRoma/Gradient-Transformer instead.
  """
  given = given or str(root)
  marker = root / OFFICIAL[name][0]
  if not marker.is_file():
    repository = GANET_REPOSITORY if name == 'ganet' else GGLNET_REPOSITORY
    raise ValueError(f'--torch-reference {given}: no {OFFICIAL[name][0]}; pass '
                     f'the root of a checkout of {repository}.')
  if name != 'ganet':
    return
  imports = _relative_imports(marker)
  later = [m for m in imports if m.split('.')[0] in _LATER_DATRANSNET_MODULES]
  if later or _GANET_MODULE not in imports:
    reason = (f'it imports {", ".join("." + m for m in later)}, modules GaNet '
              'does not have' if later else
              f"it does not import GaNet's GradFormer (.{_GANET_MODULE})")
    raise ValueError(
        f'--torch-reference {given}: {OFFICIAL[name][0]} there is not the '
        f"paper's GaNet: {reason}. greekinRoma/DATransNet holds the authors' "
        'later DATransNet network in that file (its InceptionNeXt block needs '
        "timm). GaNet's official code is greekinRoma/Gradient-Transformer: "
        f'git clone {GANET_REPOSITORY} and pass that directory.')


def import_torch():
  """torch, or an ImportError that says how to get it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        '--torch-reference needs torch: pip install -e ".[torch]" (the CPU '
        'wheel is enough).') from e
  return torch


def find_references(dirs: Iterable[str]) -> dict[str, pathlib.Path]:
  """Maps each model name to the checkout among `dirs` that has its code.

  Raises:
    ValueError: a directory is missing, holds neither official model, or holds
      greekinRoma/DATransNet's later network instead of GaNet.
  """
  found = {}
  for d in dirs:
    root = pathlib.Path(d).expanduser().resolve()
    if not root.is_dir():
      raise ValueError(f'--torch-reference {d}: no such directory.')
    names = [n for n, (marker, *_) in OFFICIAL.items() if (root / marker).is_file()]
    if not names:
      markers = ', '.join(m for m, *_ in OFFICIAL.values())
      raise ValueError(
          f'--torch-reference {d}: holds none of {markers}. Pass the root of a '
          'checkout of greekinRoma/Gradient-Transformer (GaNet) or '
          'YuChuang1205/MSDA-Net (GGL-Net).')
    for n in names:
      check_checkout(n, root, d)
      found[n] = root
  return found


@contextlib.contextmanager
def _isolated_model_package(root: pathlib.Path):
  """Makes `model` resolve to root/model without running its __init__.py."""
  saved = {k: v for k, v in sys.modules.items()
           if k == 'model' or k.startswith('model.')}
  for k in saved:
    del sys.modules[k]
  package = types.ModuleType('model')
  package.__path__ = [str(root / 'model')]
  sys.modules['model'] = package
  sys.path.insert(0, str(root))
  try:
    yield
  finally:
    sys.path.remove(str(root))
    for k in [k for k in sys.modules if k == 'model' or k.startswith('model.')]:
      del sys.modules[k]
    sys.modules.update(saved)


@contextlib.contextmanager
def _cuda_calls_stay_on_cpu(torch):
  if torch.cuda.is_available():
    yield
    return
  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = original


def build_official(name: str, root: pathlib.Path, size: int):
  """The official torch module for `name`, built for `size` x `size` inputs."""
  check_checkout(name, root)
  torch = import_torch()
  _, module_name, class_name, kwargs = OFFICIAL[name]
  with _isolated_model_package(root):
    cls = getattr(importlib.import_module(module_name), class_name)
    torch.manual_seed(0)
    with _cuda_calls_stay_on_cpu(torch):
      return cls(**kwargs(size))


def state_dict_numpy(module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _soft_iou(torch, probs, targets, reduction: str):
  """SoftIoU on probabilities, as each official training script computes it."""
  smooth = 1.0
  dims = None if reduction == 'batch' else (1, 2, 3)
  if dims is None:
    inter = (probs * targets).sum()
    union = probs.sum() + targets.sum() - inter
  else:
    inter = (probs * targets).sum(dim=dims)
    union = probs.sum(dim=dims) + targets.sum(dim=dims) - inter
  return 1.0 - torch.mean((inter + smooth) / (union + smooth))


class TorchBench:
  """Eager train step (Adam) and inference of an official model.

  The official models end with a sigmoid; the loss takes those probabilities,
  as in the official training scripts.
  """

  def __init__(self, module, *, reduction: str, learning_rate: float = 5e-4):
    self.torch = import_torch()
    self.module = module
    self.reduction = reduction
    self.optimizer = self.torch.optim.Adam(module.parameters(), lr=learning_rate)

  def _tensor(self, array_nhwc: np.ndarray):
    # A fresh copy, not np.ascontiguousarray: with one channel numpy deems the
    # transposed view contiguous already, torch then sees channels-last strides
    # and the official GaNet's `.view` calls fail.
    return self.torch.from_numpy(
        np.transpose(array_nhwc, (0, 3, 1, 2)).copy())

  def train_call(self, images: np.ndarray, masks: np.ndarray) -> Callable[[], float]:
    torch, module, opt = self.torch, self.module, self.optimizer
    x, y = self._tensor(images), self._tensor(masks)

    def call():
      module.train()
      opt.zero_grad(set_to_none=True)
      loss = _soft_iou(torch, module(x), y, self.reduction)
      loss.backward()
      opt.step()
      return loss.item()
    return call

  def infer_call(self, images: np.ndarray) -> Callable[[], object]:
    torch, module = self.torch, self.module
    x = self._tensor(images)

    def call():
      module.eval()
      with torch.inference_mode():
        return module(x)
    return call

  def infer_output(self, images: np.ndarray) -> np.ndarray:
    out = self.infer_call(images)()
    return np.transpose(out.numpy(), (0, 2, 3, 1))


def peak_matmul(n: int = 2048) -> Callable[[], object]:
  """One call of an (n, n) @ (n, n) float32 matmul in torch."""
  torch = import_torch()
  gen = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=gen)
  b = torch.randn(n, n, generator=gen)
  torch.matmul(a, b)
  return lambda: torch.matmul(a, b)
