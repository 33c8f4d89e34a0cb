r"""GaNet Table II: what GradFormer and GFEM add to the U-Net (NUDT-SIRST in the paper).

Rows: U-Net, U-Net + GradFormer, U-Net + GFEM, both (GaNet), with GaNet's
recipe (configs/ganet.py), 3 seeds each; the paper reports one run per row,
at its best epoch.

Run (GPU; each row's seeds train stacked on one device, rows on separate devices):
  python -m irstd_jax.sweep --sweep=configs/sweeps/ganet_table2.py --workdir=workdirs/ganet_table2 \
      --set=dataset.source_dir=PATH/TO/NUDT-SIRST
Quick offline version (CPU, synthetic data):
  python -m irstd_jax.sweep --sweep=configs/sweeps/ganet_table2.py:quick --workdir=workdirs/table2_quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

PAPER = {  # Table II of the paper: mIoU, F1, Pd (%), Fa (1e-6).
    'U-Net': dict(miou=91.31, f1=95.44, pd=97.98, fa=4.46),
    'U-Net + GradFormer': dict(miou=94.25, f1=97.03, pd=98.83, fa=2.73),
    'U-Net + GFEM': dict(miou=92.32, f1=96.14, pd=96.30, fa=3.96),
    'U-Net + GradFormer + GFEM (GaNet)': dict(miou=94.82, f1=97.34, pd=98.94, fa=1.82),
}


def get_sweep(arg=None):
  rows = [
      spec.row('U-Net', model__options__use_gradformer=False, model__options__use_gfem=False),
      spec.row('U-Net + GradFormer', model__options__use_gfem=False),
      spec.row('U-Net + GFEM', model__options__use_gradformer=False),
      spec.row('U-Net + GradFormer + GFEM (GaNet)'),
  ]
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'ganet.py'), title='GaNet Table II',
      rows=rows, dataset='nudt_sirst',
      fields={'dataset.train_split': 'train', 'eval.pd_fa_relative': True},
      paper=PAPER, paper_note='NUDT-SIRST (50/50), one run per row, best epoch.')
