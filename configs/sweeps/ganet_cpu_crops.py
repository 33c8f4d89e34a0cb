r"""GaNet's CPU recipe (configs/ganet.py:cpu) with 50 / 70 / 80 % of the crops around a target.

The share applies to the epochs on crops of 128; the recipe's last 5 epochs
(crops of 192) keep every crop on a target in each row.

Not a paper table: the experiment that decides whether the share of crops
placed around a target trades mIoU for Pd on SIRST-v1 (README, "A real-data
result on a CPU"). One run per setting cannot: two seeds of the 70 % setting
ended 7 Pd points apart (docs/reproducing.md, CPU-budget runs). Each trial is
the README's `:cpu` run (BasicIRSTD's split, per-image native test, final
epoch; 70 % is its own share).

Run (about 30 minutes per trial on a 2-core CPU, 9 trials; minutes on a GPU):
  python -m irstd_jax.sweep --sweep=configs/sweeps/ganet_cpu_crops.py --workdir=workdirs/ganet_cpu_crops \
      --set=dataset.source_dir=PATH/TO/sirst
Arguments after ':': seeds=N (0..N-1, default 3), rows=N, epochs=N (`quick`
is refused: `:cpu` is a recipe of its own).
"""

import os

from irstd_jax.sweeps import spec

HERE = os.path.dirname(os.path.abspath(__file__))
SHARES = (0.5, 0.7, 0.8)  # 0.5 is BasicIRSTD's pos_prob, 0.7 the recipe's default.


def get_sweep(arg=None):
  rows = [spec.row(f'{round(share * 100)} % of crops on a target',
                   input__positive_crop_probability=share) for share in SHARES]
  return spec.standard(
      arg, config_file=os.path.join(HERE, '..', 'ganet.py'), variant='cpu',
      title='GaNet :cpu on SIRST-v1, share of crops around a target', rows=rows,
      paper_note='No paper numbers: a CPU recipe of this toolbox.')
