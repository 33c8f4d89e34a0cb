r"""GGL-Net Table I: the inputs of the main and the supplementary branch.

The paper's numbers are on NUAA-SIRST with a 224 / 96 split that no public
list gives; the rows here run configs/gglnet.py on SIRST-v1's own split
(idx_427, 341 / 86), so compare the differences between rows, not the numbers.

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/gglnet_table1.py --workdir=workdirs/ggl_table1 \
      --set=dataset.source_dir=PATH/TO/sirst
Quick offline version: --sweep=configs/sweeps/gglnet_table1.py:quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = {  # Row: (main branch input, supplementary branch input).
    'Original': ('image', 'none'),
    'Gradient': ('gradient', 'none'),
    'Original+Original': ('image', 'image'),
    'Gradient+Gradient': ('gradient', 'gradient'),
    'Gradient+Original': ('gradient', 'image'),
    'Original+Gradient (GGL-Net)': ('image', 'gradient'),
}
PAPER = {  # Table I: IoU, nIoU (as fractions in the paper).
    'Original': dict(miou=79.84, niou=77.96),
    'Gradient': dict(miou=80.15, niou=77.50),
    'Original+Original': dict(miou=78.89, niou=77.93),
    'Gradient+Gradient': dict(miou=80.02, niou=77.52),
    'Gradient+Original': dict(miou=80.81, niou=78.33),
    'Original+Gradient (GGL-Net)': dict(miou=81.42, niou=78.58),
}


def get_sweep(arg=None):
  rows = [spec.row(name, model__options__main_input=main, model__options__supplementary=extra)
          for name, (main, extra) in ROWS.items()]
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'gglnet.py'), title='GGL-Net Table I (branch inputs)', rows=rows,
      paper=PAPER, paper_note='NUAA-SIRST 224 / 96 split (not available here), one run per '
      'row; the rows here use SIRST-v1 idx_427 (341 / 86).')
