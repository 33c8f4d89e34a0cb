r"""GaNet Table I: the dilation rates of GradFormer's heads (NUDT-SIRST in the paper).

Rows: dilations 1 / 1, 3 (GaNet) / 1, 5, with GaNet's recipe (configs/ganet.py).

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/ganet_dilations.py --workdir=workdirs/ganet_dilations \
      --set=dataset.source_dir=PATH/TO/NUDT-SIRST
Quick offline version: --sweep=configs/sweeps/ganet_dilations.py:quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

PAPER = {  # Table I of the paper: mIoU, F1, Pd (%), Fa (1e-6).
    'dilations 1': dict(miou=93.53, f1=96.30, pd=98.89, fa=5.58),
    'dilations 1, 3 (GaNet)': dict(miou=94.82, f1=97.34, pd=98.94, fa=1.82),
    'dilations 1, 5': dict(miou=94.24, f1=97.03, pd=98.65, fa=1.47),
}


def get_sweep(arg=None):
  rows = spec.zip_rows(PAPER, model__options__dilations=[(1,), (1, 3), (1, 5)])
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'ganet.py'), title='GaNet Table I (dilations)',
      rows=rows, dataset='nudt_sirst',
      fields={'dataset.train_split': 'train', 'eval.pd_fa_relative': True},
      paper=PAPER, paper_note='NUDT-SIRST (50/50), one run per row, best epoch.')
