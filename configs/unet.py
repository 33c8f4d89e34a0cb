r"""The U-Net baseline of GaNet's Table II, trained with GaNet's recipe.

GaNet without GradFormer and without GFEM (the same encoder, decoder and
attention gates), so `unet` vs `ganet` runs measure what the two modules add.
Everything else (data, protocol, schedule, reporting) is configs/ganet.py's;
see its docstring. Paper, NUDT-SIRST: U-Net mIoU 91.31 vs GaNet 94.82.

Run:
  python -m irstd_jax.main --config=configs/unet.py --workdir=workdirs/unet \
      --config.dataset.source_dir=PATH/TO/sirst
Quick offline demo:
  python -m irstd_jax.main --config=configs/unet.py:quick --workdir=workdirs/quick_unet
"""

import os

from irstd_jax import config_lib


def get_config(arg=None):
  """GaNet's config with the plain U-Net model."""
  c = config_lib.load_config(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ganet.py'), arg)
  c.model.name = 'unet'
  c.model.options = {}
  return c
