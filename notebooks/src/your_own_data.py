# %% [markdown]
# # Your own data: a folder of images and masks, detection, scoring
#
# A researcher's own infrared images rarely come as a published benchmark.
# This notebook makes a small folder of images and masks (a few SIRST images
# when the shared copy is at `../shared`, else generated scenes), turns it into
# a dataset (`irstd_folder`), trains GaNet on it briefly, scores it, finds
# targets in images that have no masks, and scores the predictions of another
# method (a classical top-hat filter) with the same metrics.

# %% [markdown]
# ## Parameters
#
# `IRSTD_NOTEBOOK_SMOKE=1` (the tests) takes a few images and 24 steps. The
# real size trains 30 epochs (480 steps) on 64 images: about five minutes on
# two CPU cores, enough to find most targets, far from a paper's 400 epochs.

# %% tags=["parameters"]
import os
import pathlib

import irstd_jax

SMOKE = os.environ.get('IRSTD_NOTEBOOK_SMOKE') == '1'
REPO = pathlib.Path(irstd_jax.__file__).resolve().parents[1]
WORK = pathlib.Path(os.environ.get('IRSTD_NOTEBOOK_WORKDIR') or REPO / 'workdirs' / 'notebooks')
SIRST = REPO.parent / 'shared' / 'datasets' / 'sirst_v1'  # used when present

NUM_TRAIN, NUM_TEST, NUM_NEW = (16, 4, 2) if SMOKE else (64, 16, 4)
EPOCHS = 6 if SMOKE else 30
CROP = 64               # training crops (BasicIRSTD's protocol, at a CPU's size)
LEARNING_RATE = 2e-3    # 4x GaNet's; 5e-3 collapsed here after ~200 steps
# Padded shapes compiled for native-resolution evaluation: 1 pads every image
# to the largest (one compilation), 4 is the default (less padding).
MAX_SHAPES = 1 if SMOKE else 4
SUFFIX = '_smoke' if SMOKE else ''
DATA = WORK / f'my_data{SUFFIX}'
WORKDIR = WORK / f'your_own_data{SUFFIX}'

# %% [markdown]
# ## 1. A folder of images and masks
#
# The layout `irstd_folder` reads (README, "Your own data"):
#
# ```
# my_data/images/NAME.png     any size, 8- or 16-bit, grey or colour
# my_data/masks/NAME.png      the same names, target pixels > 0
# my_data/img_idx/train.txt   optional: names per split
# my_data/img_idx/test.txt
# ```
#
# Here the files are copied from SIRST-v1 as they are (several formats,
# sizes around 320x240) or, without it, generated. A few more images go to
# `new/` without masks, for detection later.

# %%
import shutil

import numpy as np
import PIL.Image

from irstd_jax.datasets import synthetic


def sirst_names(split, count, skip=0):
  """Names of a SIRST-v1 split whose image and mask have the same size."""
  names = (SIRST / 'splits' / 'idx_427' / f'{split}.txt').read_text().split()
  good = [n for n in names if PIL.Image.open(SIRST / 'images' / f'{n}.png').size
          == PIL.Image.open(SIRST / 'masks' / f'{n}_pixels0.png').size]
  return good[skip:skip + count]


def write_folder(root):
  shutil.rmtree(root, ignore_errors=True)
  for sub in ('images', 'masks', 'img_idx', 'new'):
    (root / sub).mkdir(parents=True)
  if SIRST.is_dir():
    splits = {'train': sirst_names('trainval', NUM_TRAIN),
              'test': sirst_names('test', NUM_TEST)}
    for name in splits['train'] + splits['test']:
      shutil.copyfile(SIRST / 'images' / f'{name}.png', root / 'images' / f'{name}.png')
      shutil.copyfile(SIRST / 'masks' / f'{name}_pixels0.png', root / 'masks' / f'{name}.png')
    for name in sirst_names('test', NUM_NEW, skip=NUM_TEST):
      shutil.copyfile(SIRST / 'images' / f'{name}.png', root / 'new' / f'{name}.png')
  else:
    counts = {'train': NUM_TRAIN, 'test': NUM_TEST, 'new': NUM_NEW}
    splits = {}
    for index, (split, count) in enumerate(counts.items()):
      names = [f'{split}_{i:03d}' for i in range(count)]
      for i, name in enumerate(names):
        rng = synthetic.scene_rng(7, index, i)
        height, width = rng.integers(128, 256, size=2)
        image, mask, _ = synthetic.render_scene(rng, int(height), int(width))
        folder = 'new' if split == 'new' else 'images'
        PIL.Image.fromarray(image).save(root / folder / f'{name}.png')
        if split != 'new':
          PIL.Image.fromarray(mask * 255).save(root / 'masks' / f'{name}.png')
          splits.setdefault(split, []).append(name)
  for split, names in splits.items():
    (root / 'img_idx' / f'{split}.txt').write_text('\n'.join(names) + '\n')
  return splits


splits = write_folder(DATA)
print(f"{'SIRST-v1 images' if SIRST.is_dir() else 'generated scenes'} in {DATA.name}/: "
      f"{len(splits['train'])} train, {len(splits['test'])} test, "
      f"{len(list((DATA / 'new').iterdir()))} without masks in new/")

# %% [markdown]
# A look at four of them, the mask drawn as a green outline:

# %%
import matplotlib.pyplot as plt

from irstd_jax.datasets import imageio

fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
for ax, name in zip(axes, splits['train']):
  image = imageio.read_image(DATA / 'images' / f'{name}.png')
  mask = imageio.read_mask(DATA / 'masks' / f'{name}.png')
  ax.imshow(image, cmap='gray')
  ax.contour(mask, levels=[0.5], colors='lime', linewidths=0.8)
  ax.set_title(f'{name}  {image.shape[1]}x{image.shape[0]}', fontsize=9)
  ax.axis('off')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The folder as a dataset
#
# `datasets.load('irstd_folder', split, source_dir=...)` converts the folder
# once into TFDS files (no TensorFlow needed) and reads them back; editing the
# folder rebuilds it. Images become grey uint8 (colour through luma, 16-bit
# stretched), masks {0, 1}; each example carries its targets' boxes.

# %%
from irstd_jax import datasets

train_source = datasets.load('irstd_folder', 'train', source_dir=str(DATA))
example = train_source[0]
print(train_source)
print({k: getattr(v, 'shape', v) for k, v in example.items()})
print(f'grey-level mean / std over the folder: {train_source.mean_std}')

# %% [markdown]
# ## 3. Train briefly
#
# GaNet's config with `dataset=irstd_folder` and BasicIRSTD's protocol
# (`protocol=basicirstd`: random crops with flips, the folder's own mean and
# std, native-resolution test), shrunk to 64-pixel crops and 4x the paper's
# learning rate for a CPU. The command line equivalent:
# `python -m irstd_jax.main --config=configs/ganet.py:dataset=irstd_folder,protocol=basicirstd,epochs=30
# --config.dataset.source_dir=my_data --config.input.crop_size=64
# --config.optimizer.learning_rate=2e-3 --workdir=...`.

# %%
from irstd_jax import config_lib
from irstd_jax import train

config = config_lib.load_config(str(REPO / 'configs' / 'ganet.py'),
                                f'dataset=irstd_folder,protocol=basicirstd,epochs={EPOCHS}')
config.dataset.source_dir = str(DATA)
config.input.crop_size = CROP
config.optimizer.learning_rate = LEARNING_RATE
config.eval.every_epochs = 10
config.eval.max_shapes = MAX_SHAPES
config.eval.num_overlays = NUM_TEST

run = train.train_and_evaluate(config, str(WORKDIR))

# %% [markdown]
# Scoring the best checkpoint again (eval mode) gives the table once more and
# writes the overlays of `predictions/` in the workdir:

# %%
result = train.evaluate_checkpoint(config, str(WORKDIR), checkpoint='best')

# %% [markdown]
# ## 4. Targets in images without masks
#
# `Predictor.detect` returns, per image, the probabilities, the mask
# (`probs > threshold`) and the targets: the 8-connected components of the
# mask (the components Pd counts), each with its centroid, area, box and
# probabilities. `python -m irstd_jax.predict` writes the same as
# `targets.csv`.

# %%
from irstd_jax import inference
from irstd_jax.evaluation import pictures

predictor = inference.Predictor.from_workdir(str(WORKDIR), checkpoint='best')
new_files = sorted((DATA / 'new').iterdir())
new_images = [inference.read_image(str(path)) for path in new_files]
found = predictor.detect(new_images)

fig, axes = plt.subplots(1, len(new_files), figsize=(4.5 * len(new_files), 3.6), squeeze=False)
for ax, path, image, detection in zip(axes[0], new_files, new_images, found):
  ax.imshow(pictures.detections(image, detection.mask, detection.targets))
  for target in detection.targets:
    ax.plot(target['centroid_x'], target['centroid_y'], '+', color='magenta', ms=9)
  ax.set_title(f'{path.name}: {len(detection.targets)} target(s)', fontsize=9)
  ax.axis('off')
fig.tight_layout()
plt.show()

print(f"{'file':14s} {'target':>6s} {'centroid x':>10s} {'centroid y':>10s} {'area':>5s} "
      f"{'peak p':>7s}")
for path, detection in zip(new_files, found):
  for target in detection.targets[:8]:
    print(f"{path.name:14s} {target['target']:6d} {target['centroid_x']:10.1f} "
          f"{target['centroid_y']:10.1f} {target['area']:5d} {target['peak_prob']:7.3f}")
  if len(detection.targets) > 8:
    print(f'{path.name:14s} ... {len(detection.targets) - 8} more')

# %% [markdown]
# ## 5. Scoring predictions made by another method
#
# `irstd_jax.evaluate` scores maps from anywhere: PNG (8- or 16-bit) or .npy
# probabilities, or binary masks, matched to the masks by file name. As the
# "other method", a classical detector: a white top-hat (the image minus its
# grey opening over 9x9 pixels keeps what is brighter than its surroundings
# and smaller than the window), turned into a probability-like map by
# `1 - exp(-contrast / 40)`. Next to it, the trained GaNet's maps of the same
# images, written as `predict` writes them (16-bit PNG).

# %%
from scipy import ndimage

from irstd_jax import evaluate


def top_hat(image, size=9, scale=40.0):
  grey = image.astype(np.float32)
  contrast = grey - ndimage.grey_opening(grey, size=(size, size))
  return 1 - np.exp(-contrast / scale)


test_images = [imageio.read_image(DATA / 'images' / f'{n}.png') for n in splits['test']]
methods = {'top_hat': [top_hat(image) for image in test_images],
           'ganet': predictor.predict(test_images)}
for method, maps in methods.items():
  folder = WORK / f'predictions{SUFFIX}' / method
  shutil.rmtree(folder, ignore_errors=True)
  folder.mkdir(parents=True)
  for name, probs in zip(splits['test'], maps):
    PIL.Image.fromarray(inference.probs_to_uint16(probs, 0.5)).save(folder / f'{name}.png')

results = {}
for method in methods:
  folder = WORK / f'predictions{SUFFIX}' / method
  predictions = evaluate.index_files(str(folder), evaluate.PREDICTION_EXTENSIONS)
  masks, _ = evaluate.folder_masks(str(DATA / 'masks'), list(predictions))
  masks = {name: masks[name] for name in splits['test']}  # the test split's masks
  results[method] = evaluate.evaluate(predictions, masks, threshold=0.5)
  evaluate.write(results[method], str(folder.parent / f'{method}_evaluation'), method)
  print(f"{method}: {results[method]['images']} images ({results[method]['kind']})")
  print(evaluate.table(results[method]) + '\n')

# %% [markdown]
# `default` is BasicIRSTD's Pd / Fa; the other rows are the variants the
# metrics offer (see `metrics_explained.ipynb`). mIoU, nIoU, F1, P, R and Pd
# are percentages, Fa false-alarm pixels per million. GaNet's maps, read back
# from 16-bit PNGs, score what eval mode scored on the same checkpoint:

# %%
ours = results['ganet']['metrics']['default']
for key in ('miou', 'niou', 'pd', 'fa'):
  print(f'{key:5s} evaluate {ours[key]:.6f}   eval mode {result[key]:.6f}')

# %% [markdown]
# `evaluate.write` also drew the ROC and Pd-Fa curves of each method:

# %%
fig, axes = plt.subplots(2, 1, figsize=(11, 7))
for ax, method in zip(axes, methods):
  ax.imshow(plt.imread(WORK / f'predictions{SUFFIX}' / f'{method}_evaluation' / 'curves.png'))
  ax.set_title(method, fontsize=10)
  ax.axis('off')
fig.tight_layout()
plt.show()

# %% [markdown]
# From a shell, the same scoring is
# `python -m irstd_jax.evaluate --predictions=FOLDER --masks=my_data/masks`
# ([inference](../docs/inference.md)).
