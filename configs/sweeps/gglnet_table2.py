r"""GGL-Net Table II: the gradient supplement module (GSM).

The paper's numbers are on NUAA-SIRST with a 224 / 96 split that no public
list gives; the rows here run configs/gglnet.py on SIRST-v1's own split
(idx_427, 341 / 86), so compare the differences between rows, not the numbers.

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/gglnet_table2.py --workdir=workdirs/ggl_table2 \
      --set=dataset.source_dir=PATH/TO/sirst
Quick offline version: --sweep=configs/sweeps/gglnet_table2.py:quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = {'M_G_Add': 'add', 'M-G-M_Res': 'gblock_in_branch', 'M_G_Res (GGL-Net)': 'res'}
PAPER = {  # Table II: IoU, nIoU.
    'M_G_Add': dict(miou=80.38, niou=77.97),
    'M-G-M_Res': dict(miou=81.08, niou=78.17),
    'M_G_Res (GGL-Net)': dict(miou=81.42, niou=78.58),
}


def get_sweep(arg=None):
  rows = [spec.row(name, model__options__gsm=gsm) for name, gsm in ROWS.items()]
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'gglnet.py'), title='GGL-Net Table II (GSM)', rows=rows,
      paper=PAPER, paper_note='NUAA-SIRST 224 / 96 split (not available here), one run per '
      'row; the rows here use SIRST-v1 idx_427 (341 / 86).')
