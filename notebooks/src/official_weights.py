# %% [markdown]
# # Official weights: convert, evaluate, keep as a workdir
#
# The official GaNet and GGL-Net codes are PyTorch; their checkpoints are
# state dicts (`.pth`). This notebook loads one into the JAX model
# (`convert.from_torch`), scores it on SIRST-v1's test split, and saves it as
# an orbax checkpoint in a workdir, which eval mode
# (`python -m irstd_jax.main --mode=eval`), `python -m irstd_jax.predict` and
# fine-tuning read like any training run.
#
# Without a file of your own, the notebook first exports a state dict of the
# official layout from a randomly initialised model (`convert.to_torch`), so
# that it always runs; its scores are then those of random weights.

# %% [markdown]
# ## Parameters
#
# `WEIGHTS`: the path of an official state dict, a `.pth` (reading it needs
# PyTorch: `pip install -e ".[torch]"`; Colab has it) or a `.npz` of the same
# names. In Colab, upload it first (the folder icon on the left, or
# `google.colab.files.upload()`). `MODEL` says which network it holds.

# %% tags=["parameters"]
import os
import pathlib

import irstd_jax

MODEL = 'ganet'         # 'ganet' or 'gglnet'
WEIGHTS = ''            # an official .pth / .npz; '' exports one of the official layout here

SMOKE = os.environ.get('IRSTD_NOTEBOOK_SMOKE') == '1'
REPO = pathlib.Path(irstd_jax.__file__).resolve().parents[1]
WORK = pathlib.Path(os.environ.get('IRSTD_NOTEBOOK_WORKDIR') or REPO / 'workdirs' / 'notebooks')
SIRST = REPO.parent / 'shared' / 'datasets' / 'sirst_v1'  # else synthetic scenes

TEST_SPLIT = 'test[:4]' if SMOKE else 'test'   # a TFDS split expression
MAX_SHAPES = 1 if SMOKE else 4                 # padded shapes compiled for native resolution
SUFFIX = '_smoke' if SMOKE else ''
WORKDIR = WORK / f'official_{MODEL}{SUFFIX}'

# %% [markdown]
# ## The config the weights stand for
#
# The model's config file holds the official code's protocol (`configs/ganet.py`:
# native-resolution test, /255 input; `configs/gglnet.py`: 3 channels, tested
# at 512x512). Resolved against the dataset, it also fixes the model's
# options, which the converted model must have (GaNet's `img_size` is the
# training size, 256, as the official weights were trained).

# %%
from irstd_jax import config_lib
from irstd_jax import train

if SIRST.is_dir():
  config = config_lib.load_config(str(REPO / 'configs' / f'{MODEL}.py'))
  config.dataset.source_dir = str(SIRST)
else:
  config = config_lib.load_config(str(REPO / 'configs' / f'{MODEL}.py'),
                                  'dataset=irstd_synthetic')
  config.dataset.options = dict(num_train=4, num_test=16, min_size=128, max_size=256)
config.eval.split = TEST_SPLIT
config.eval.max_shapes = MAX_SHAPES

(train_source,) = train.load_sources(config, config_lib.splits(config)[:1])
options = config_lib.resolve(config, train_source).model.options.to_dict()
print(f'{MODEL} on {config.dataset.name} ({TEST_SPLIT}), model options {options}')

# %% [markdown]
# ## A state dict of the official layout
#
# With `WEIGHTS` empty, a model built here with random weights is exported
# by `convert.to_torch`: the official parameter names and PyTorch layouts
# (convolutions `(out, in, kh, kw)`, batch-norm `weight / bias /
# running_mean / running_var`), saved as `.npz` (and as `.pth` when PyTorch is
# installed). Loading an official file works the same way.

# %%
import numpy as np
from flax import nnx

from irstd_jax import convert
from irstd_jax import models

weights = WEIGHTS
if not weights:
  random_model = models.build(MODEL, rngs=nnx.Rngs(0), **options)
  state_dict = convert.to_torch(random_model)
  WORK.mkdir(parents=True, exist_ok=True)
  weights = str(WORK / f'{MODEL}_official_layout.npz')
  np.savez(weights, **state_dict)
  try:
    import torch
    weights = weights[:-len('.npz')] + '.pth'
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, weights)
  except ImportError:
    pass  # .npz then: the converter reads it without PyTorch.
print(f'weights: {pathlib.Path(weights).name}')

# %% [markdown]
# ## Convert
#
# `convert.read_state_dict` reads the file (a `.pth` may hold the state dict
# under `state_dict`, `model` or `net`; DataParallel's `module.` prefix goes).
# `convert.from_torch` builds the model abstractly and fills every parameter
# and batch-norm statistic from the state dict; a name it does not know, a
# missing one or a shape of other options stops it with the name. Converting
# back gives the same arrays, bit for bit.

# %%
loaded = convert.read_state_dict(weights)   # names -> numpy arrays
model = convert.from_torch(MODEL, loaded, **options)
back = convert.to_torch(model)
worst = max(float(np.max(np.abs(back[k] - loaded[k]))) for k in back)
print(f'{len(loaded)} tensors in the file, {len(back)} used by the forward pass '
      f'({models.count_params(model):,} parameters); largest round-trip difference {worst}')
for name in list(back)[:4]:
  print(f'  {name:40s} {tuple(loaded[name].shape)}')

# %% [markdown]
# ## Keep it as a workdir
#
# `train.save_model` writes the model as step 0 of a new workdir: the
# resolved `config.json` and an orbax checkpoint (model, a fresh optimizer
# state, the input pipeline at its start). Without an evaluation's metrics it
# is the workdir's latest checkpoint, not yet a "best" one.

# %%
import shutil

shutil.rmtree(WORKDIR, ignore_errors=True)  # a fresh workdir on every run of the notebook
train.save_model(model, config, str(WORKDIR))
for path in sorted(WORKDIR.rglob('*')):
  depth = len(path.relative_to(WORKDIR).parts)
  if depth <= 2:
    print('  ' * (depth - 1) + path.name + ('/' if path.is_dir() else ''))

# %% [markdown]
# ## Evaluate from the workdir
#
# `train.evaluate_checkpoint` is what eval mode runs; from a shell the same is
#
# ```
# python -m irstd_jax.main --config=configs/ganet.py --workdir=WORKDIR \
#     --mode=eval --checkpoint=latest --config.dataset.source_dir=PATH/TO/sirst_v1
# ```
#
# It scores the split at native resolution with every metric and writes the
# scores and overlays into the workdir.

# %%
result = train.evaluate_checkpoint(config, str(WORKDIR), checkpoint='latest')
print(f"\nmIoU {100 * result['miou']:.2f}  nIoU {100 * result['niou']:.2f}  "
      f"Pd {100 * result['pd']:.2f}  Fa {1e6 * result['fa']:.1f} per million  "
      f"(step {result['step']}, {int(result['targets'])} targets)")
print(sorted(p.name for p in WORKDIR.glob('eval_*.json')))

# %% [markdown]
# The overlays it wrote (hits green, false alarms red, misses yellow; small
# images enlarged):

# %%
import matplotlib.pyplot as plt

overlays = sorted((WORKDIR / 'predictions').glob('*/*.png'))[:3]
fig, axes = plt.subplots(1, len(overlays), figsize=(4.2 * len(overlays), 3.6), squeeze=False)
for ax, path in zip(axes[0], overlays):
  ax.imshow(plt.imread(path))
  ax.set_title(path.stem, fontsize=9)
  ax.axis('off')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What else reads the workdir
#
# - `inference.Predictor.from_workdir(WORKDIR, checkpoint='latest')` and
#   `python -m irstd_jax.predict --workdir=WORKDIR --checkpoint=latest
#   --input=IMAGES --output=OUT`: detection on new images with the official
#   input (/255; 3 channels for GGL-Net).
# - `train.train_and_evaluate(config, WORKDIR)`: fine-tuning from these
#   weights with the config's recipe (it resumes at step 0).
# - `Predictor.from_torch(MODEL, weights)` predicts from the state dict
#   directly, without a workdir.
