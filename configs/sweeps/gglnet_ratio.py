r"""GGL-Net Fig. 7: the reduction ratio r of the TGFM channel attention.

The paper's numbers are on NUAA-SIRST with a 224 / 96 split that no public
list gives; the rows here run configs/gglnet.py on SIRST-v1's own split
(idx_427, 341 / 86), so compare the differences between rows, not the numbers.

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/gglnet_ratio.py --workdir=workdirs/ggl_ratio \
      --set=dataset.source_dir=PATH/TO/sirst
Quick offline version: --sweep=configs/sweeps/gglnet_ratio.py:quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

PAPER = {}  # Fig. 7 plots the values without printing them; the paper keeps r = 8.


def get_sweep(arg=None):
  rows = spec.product('r={model__options__ca_ratio}', model__options__ca_ratio=(1, 2, 4, 8, 16))
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'gglnet.py'), title='GGL-Net Fig. 7 (TGFM reduction ratio r)', rows=rows,
      paper=PAPER, paper_note='NUAA-SIRST 224 / 96 split (not available here), one run per '
      'row; the rows here use SIRST-v1 idx_427 (341 / 86).')
