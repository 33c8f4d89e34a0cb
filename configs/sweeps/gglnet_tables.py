r"""GGL-Net's ablations: Table I (branch inputs), II (GSM), III (TGFM) and Fig. 7 (r).

One file, four tables: `:table=1`, `:table=2`, `:table=3` or `:table=r`. The
paper's numbers are on NUAA-SIRST with a 224 / 96 split that no public list
gives; the rows here run configs/gglnet.py on SIRST-v1's own split (idx_427,
341 / 86), so compare the differences between rows, not the numbers.

Run:
  python -m irstd_jax.sweep --sweep=configs/sweeps/gglnet_tables.py:table=1 --workdir=workdirs/ggl_table1 \
      --set=dataset.source_dir=PATH/TO/sirst
Quick offline version: --sweep=configs/sweeps/gglnet_tables.py:table=2,quick
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))

TABLES = {
    '1': ('GGL-Net Table I (branch inputs)', [
        ('Original', 'image', 'none', 0.7984, 0.7796),
        ('Gradient', 'gradient', 'none', 0.8015, 0.7750),
        ('Original+Original', 'image', 'image', 0.7889, 0.7793),
        ('Gradient+Gradient', 'gradient', 'gradient', 0.8002, 0.7752),
        ('Gradient+Original', 'gradient', 'image', 0.8081, 0.7833),
        ('Original+Gradient (GGL-Net)', 'image', 'gradient', 0.8142, 0.7858)]),
    '2': ('GGL-Net Table II (GSM)', [
        ('M_G_Add', 'add', 0.8038, 0.7797),
        ('M-G-M_Res', 'gblock_in_branch', 0.8108, 0.7817),
        ('M_G_Res (GGL-Net)', 'res', 0.8142, 0.7858)]),
    '3': ('GGL-Net Table III (TGFM)', [
        ('ADD', 'add', 0.8062, 0.7798),
        ('CAM', 'cam', 0.8114, 0.7810),
        ('SAM', 'sam', 0.8119, 0.7812),
        ('TGFM (GGL-Net)', 'tgfm', 0.8142, 0.7858)]),
}


def get_sweep(arg=None):
  table, _, rest = (arg or '').partition(',')
  if table.startswith('table='):
    table = table.split('=', 1)[1]
  else:
    table, rest = '1', arg or ''
  if table == 'r':
    rows = spec.product('r={model__options__ca_ratio}',
                        model__options__ca_ratio=(1, 2, 4, 8, 16))
    title, paper = 'GGL-Net Fig. 7 (TGFM reduction ratio r)', {}
  elif table in TABLES:
    title, entries = TABLES[table]
    if table == '1':
      rows = [spec.row(n, model__options__main_input=m, model__options__supplementary=s)
              for n, m, s, _, _ in entries]
    else:
      key = 'model__options__gsm' if table == '2' else 'model__options__fusion'
      rows = [spec.row(n, **{key: v}) for n, v, _, _ in entries]
    paper = {e[0]: dict(miou=100 * e[-2], niou=100 * e[-1]) for e in entries}
  else:
    raise ValueError(f"table={table!r}: use table=1, 2, 3 or r.")
  return spec.standard(
      rest, config_file=os.path.join(HERE, '..', 'gglnet.py'), title=title, rows=rows,
      paper=paper, paper_note='NUAA-SIRST 224 / 96 split (not available here), one run '
      'per row; the rows here use SIRST-v1 idx_427 (341 / 86).')
