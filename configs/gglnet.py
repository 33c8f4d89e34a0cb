r"""GGL-Net on SIRST-v1, the recipe of its official code (MSDA-Net repository).

Protocol (YuChuang1205/MSDA-Net train_MSDA_Net.py; GGL-Net paper III-B):
- data: SIRST-v1, the dataset's own split (idx_427: trainval 341 / test 86,
  as in the MSDA-Net code's SIRST table; the GGL-Net paper says 96 test
  images). Three channels (the grey image repeated), scaled to [0, 1];
- training: images resized to 512x512 with the code's flips / rotations;
  Adam lr 1e-4 (constant), batch 4, 500 epochs; SoftIoU averaged per image;
- evaluation: the test split resized to 512x512 as the code does (masks with
  nearest neighbour), threshold 0.5, after every epoch;
- reporting: the final epoch and the best epoch chosen on the test split
  (what the code reports: SIRST IoU 0.806, nIoU 0.783, Pd 1.0, Fa 4.35e-6 per
  anchors.md; a number at 512x512, not at native resolution).
`protocol=pal`: the PAL framework's fully supervised training, which the
GGL-Net authors recommend over the MSDA-Net code (YuChuang1205/PAL
train_model.py; docs/reproducing.md): BasicIRSTD's splits (213/214, 663/664;
IRSTD-1k 800/201; `dataset=sirst3` 1676/1079), random 256 crops at native
scale with the same SomeOf list (brightness / contrast 0.3, rotate p 0.3),
3 channels normalised by the training images' mean / std; AdamW lr 1e-3
(weight decay 0.01), constant, batch 16, 400 epochs; edge-weighted BCE on
the harder half of the pixels; native test (raw image padded with black to
32) every epoch; the best test mIoU is the reported model. Paper numbers
(PAL README, "CNN Full" rows): NUAA-SIRST 213:214 IoU 75.47, nIoU 75.93,
Pd 97.34, Fa 20.65e-6; on SIRST3, NUAA / NUDT / IRSTD-1k / all:
78.40 / 92.07 / 66.68 / 82.06 IoU.
`protocol=basicirstd` uses BasicIRSTD's data protocol only (its split, random
256 crops with flips, mean / std, native test) with this config's optimizer.

Cost: a GPU run (400-500 epochs); on a 2-core CPU the ETA reads about 266 h. For a
CPU-sized run on real data see docs/training.md ("What a paper config costs").

Run:
  python -m irstd_jax.main --config=configs/gglnet.py --workdir=workdirs/gglnet \
      --config.dataset.source_dir=PATH/TO/sirst
  python -m irstd_jax.main --config=configs/gglnet.py:protocol=pal --workdir=workdirs/gglnet_pal \
      --config.dataset.source_dir=PATH/TO/sirst
  python -m irstd_jax.main --config=configs/gglnet.py:protocol=pal,dataset=sirst3 \
      --workdir=workdirs/gglnet_pal_sirst3 --config.dataset.source_dir=PATH/TO/datasets
Quick offline demo:
  python -m irstd_jax.main --config=configs/gglnet.py:quick --workdir=workdirs/quick_ggl
"""

from irstd_jax import config_lib


def get_config(arg=None):
  """The config; `arg` is the text after ':' in --config."""
  arg = config_lib.parse_arg(arg, quick=False, dataset='', epochs=0,
                             protocol='code', cpu=False)
  c = config_lib.base_config()
  c.dataset.name = arg.dataset or 'sirst_v1'
  c.input.recipe = 'gglnet'
  c.input.image_size = None  # The recipe's: 512, or 256 for nudt_sirst.
  c.input.num_channels = 3
  c.model.name = 'gglnet'
  c.model.options = dict(in_channels=3)
  c.loss.reduction = 'sample'
  c.optimizer.learning_rate = 1e-4
  c.schedule.num_epochs = 500
  c.schedule.decay_epochs = ()
  c.input.batch_size = 4
  c.eval.resolution = 'train'  # The code tests at the training size.
  if arg.cpu:  # Under an hour of training on a 2-core CPU (README).
    config_lib.use_cpu_recipe(c, num_epochs=60, learning_rate=0.003)
  return config_lib.apply_variants(c, arg)
