# %% [markdown]
# # Quickstart: train GaNet on synthetic infrared scenes
#
# This notebook follows the README's offline demo from Python: it checks the
# runtime, builds GaNet and GGL-Net, trains GaNet with the `quick` config
# (`configs/ganet.py:quick`: synthetic 64x64 scenes, 12 epochs, about a minute
# and a half on two CPU cores), scores the best checkpoint and draws the
# predictions and the learning curves. Nothing is downloaded: the scenes are
# generated.

# %% [markdown]
# ## The runtime
#
# JAX runs on whatever it finds: a CPU, a GPU (in Colab: *Runtime > Change
# runtime type*) or TPU cores. Training shards every batch over all devices.

# %%
import jax

print(f'JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} device(s)')
for device in jax.devices():
  print(' ', device)

# %% [markdown]
# ## Parameters
#
# `IRSTD_NOTEBOOK_SMOKE=1` (what the tests set) shrinks the run to a few
# steps; the real size is the README's run. Training runs and generated data go
# under `WORK` (default `workdirs/notebooks` in the repository, which git
# ignores); the built datasets go to `$IRSTD_DATA_DIR`, else
# `~/tensorflow_datasets`.

# %% tags=["parameters"]
import os
import pathlib

import irstd_jax

SMOKE = os.environ.get('IRSTD_NOTEBOOK_SMOKE') == '1'
REPO = pathlib.Path(irstd_jax.__file__).resolve().parents[1]  # configs/ is there
WORK = pathlib.Path(os.environ.get('IRSTD_NOTEBOOK_WORKDIR') or REPO / 'workdirs' / 'notebooks')

EPOCHS = 3 if SMOKE else 12                      # the quick config's 12
NUM_TRAIN, NUM_TEST = (16, 4) if SMOKE else (64, 16)
EVAL_EVERY = 1 if SMOKE else 3                   # epochs between test-set evaluations
WORKDIR = WORK / ('quickstart_smoke' if SMOKE else 'quickstart')

# %% [markdown]
# ## Two networks
#
# `models.build(name, **options)` makes a Flax NNX module that takes NHWC images
# and returns logits. Built abstractly (`nnx.eval_shape`), nothing is computed:
# enough to count parameters. GGL-Net reads three channels (the grey image
# repeated), as its official code does.

# %%
from flax import nnx

from irstd_jax import models

for name, options in [('ganet', {}), ('gglnet', {'in_channels': 3})]:
  model = nnx.eval_shape(lambda: models.build(name, rngs=nnx.Rngs(0), **options))
  print(f'{name:7s} {type(model).__name__:8s} {models.count_params(model):>10,} parameters')

# %% [markdown]
# ## Train the quick config
#
# Configs are Python files loaded by path; the text after `:` picks variants
# (`quick`, `epochs=N`) and every field can be changed before training.
# `train.train_and_evaluate` is the loop that `python -m irstd_jax.main` runs:
# it generates the dataset on first use, trains, scores the test split every
# few epochs and keeps the latest and the best checkpoints in the workdir. Run
# again, it resumes, or only prints the summary when the run is complete.

# %%
from irstd_jax import config_lib
from irstd_jax import train

config = config_lib.load_config(str(REPO / 'configs' / 'ganet.py'), f'quick,epochs={EPOCHS}')
config.dataset.options.num_train = NUM_TRAIN
config.dataset.options.num_test = NUM_TEST
config.eval.every_epochs = EVAL_EVERY
print(f'{config.dataset.name} {config.dataset.options.to_dict()}')
print(f'Adam lr {config.optimizer.learning_rate}, x{config.schedule.decay_factor} at epochs '
      f'{tuple(config.schedule.decay_epochs)}, batch {config.input.batch_size}')

run = train.train_and_evaluate(config, str(WORKDIR))

# %% [markdown]
# The run reports the final epoch and the best one (chosen on the test split,
# as the GaNet and GGL-Net codes do; BasicIRSTD reports the final one). The
# workdir holds:

# %%
for path in sorted(WORKDIR.iterdir()):
  print(path.name + ('/' if path.is_dir() else ''))

# %% [markdown]
# ## Score a checkpoint
#
# `train.evaluate_checkpoint` is eval mode
# (`python -m irstd_jax.main --mode=eval --checkpoint=best`): it restores a
# checkpoint and scores a split at native resolution with every metric,
# including the Pd / Fa variants (see `metrics_explained.ipynb`).

# %%
result = train.evaluate_checkpoint(config, str(WORKDIR), checkpoint='best')
print(f"step {result['step']} (epoch {result['epoch']}): "
      f"mIoU {100 * result['miou']:.2f}, nIoU {100 * result['niou']:.2f}, "
      f"Pd {100 * result['pd']:.2f} % of {int(result['targets'])} targets, "
      f"Fa {1e6 * result['fa']:.1f} per million pixels")

# %% [markdown]
# ## Predictions as pictures
#
# `Predictor.from_workdir` loads a checkpoint with the normalisation it was
# trained with; `predict` takes images of any size and returns probabilities.
# In the overlay, predicted target pixels are green (hits), predicted
# background red (false alarms) and missed target pixels yellow.

# %%
import matplotlib.pyplot as plt
import numpy as np

from irstd_jax import datasets
from irstd_jax.evaluation import pictures
from irstd_jax.inference import Predictor

test = datasets.load(config.dataset.name, 'test', **config.dataset.options.to_dict())
predictor = Predictor.from_workdir(str(WORKDIR), checkpoint='best')
shown = [test[i] for i in range(min(4, len(test)))]
images = [e['image'][..., 0] for e in shown]
masks = [e['mask'][..., 0] for e in shown]
probs = predictor.predict(images)

fig, axes = plt.subplots(len(shown), 4, figsize=(9, 2.4 * len(shown)), squeeze=False)
for row, (image, mask, prob) in zip(axes, zip(images, masks, probs)):
  everywhere = np.ones(mask.shape, bool)
  panels = [(image, 'gray', 'image'), (mask, 'gray', 'mask'),
            (prob, 'magma', 'probability'),
            (pictures.overlay(image, mask, prob, everywhere, predictor.threshold), None,
             'overlay')]
  for ax, (picture, cmap, title) in zip(row, panels):
    ax.imshow(picture, cmap=cmap, vmin=0, vmax=1 if title in ('mask', 'probability') else None,
              interpolation='nearest')
    ax.set_title(title, fontsize=9)
    ax.axis('off')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Learning curves
#
# `metrics.jsonl` has one JSON line per write: the training loss and learning
# rate per epoch, the test metrics per evaluation. TensorBoard reads the same
# scalars from the event file (`tensorboard --logdir workdirs`).

# %%
import json

records = [json.loads(line) for line in (WORKDIR / 'metrics.jsonl').read_text().splitlines()]


def series(key):
  points = [(r['step'], r[key]) for r in records if key in r]
  return np.array(points, float).reshape(-1, 2).T


fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].plot(*series('train/loss'), 'o-')
axes[0].set(title='training loss (SoftIoU)', xlabel='step')
for key, label in [('test/miou', 'mIoU'), ('test/niou', 'nIoU'), ('test/pd', 'Pd')]:
  axes[1].plot(*series(key), 'o-', label=label)
axes[1].set(title='test split', xlabel='step', ylim=(0, 1))
axes[1].legend()
steps, fa = series('test/fa')
axes[2].semilogy(steps, 1e6 * fa, 'o-')
axes[2].set(title='false alarms per million pixels', xlabel='step')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Next
#
# - `your_own_data.ipynb`: your images and masks as a dataset, detection on
#   new images, scoring another method's predictions.
# - `official_weights.ipynb`: official PyTorch weights in, an eval-mode workdir
#   out.
# - `metrics_explained.ipynb`: what Pd, Fa, nIoU and the ROC count, rule by rule.
# - The same run from a shell: `python -m irstd_jax.main
#   --config=configs/ganet.py:quick --workdir=workdirs/quick`
#   ([training](../docs/training.md)).
