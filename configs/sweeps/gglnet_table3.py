r"""GGL-Net Table III: the two-way guidance fusion module (TGFM).

The paper's numbers are on NUAA-SIRST with a 224 / 96 split that no public
list gives; the rows here run configs/gglnet.py on SIRST-v1's own split
(idx_427, 341 / 86), so compare the differences between rows, not the numbers.

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/gglnet_table3.py --workdir=workdirs/ggl_table3 \
      --set=dataset.source_dir=PATH/TO/sirst
Quick offline version: --sweep=configs/sweeps/gglnet_table3.py:quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = {'ADD': 'add', 'CAM': 'cam', 'SAM': 'sam', 'TGFM (GGL-Net)': 'tgfm'}
PAPER = {  # Table III: IoU, nIoU.
    'ADD': dict(miou=80.62, niou=77.98),
    'CAM': dict(miou=81.14, niou=78.10),
    'SAM': dict(miou=81.19, niou=78.12),
    'TGFM (GGL-Net)': dict(miou=81.42, niou=78.58),
}


def get_sweep(arg=None):
  rows = [spec.row(name, model__options__fusion=fusion) for name, fusion in ROWS.items()]
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'gglnet.py'), title='GGL-Net Table III (TGFM)', rows=rows,
      paper=PAPER, paper_note='NUAA-SIRST 224 / 96 split (not available here), one run per '
      'row; the rows here use SIRST-v1 idx_427 (341 / 86).')
