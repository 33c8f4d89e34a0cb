# %% [markdown]
# # The metrics, explained on real images
#
# Infrared small target detection is scored at two levels. Pixel-level
# metrics (mIoU, nIoU, precision / recall / F1, the ROC) compare predicted
# and target pixels. Target-level metrics count objects: Pd, the fraction of
# targets detected, and Fa, the fraction of pixels that are false alarms.
# "Detected" has several definitions in the literature, and papers rarely say
# which one they used. This notebook scores a classical detector on a
# handful of SIRST-v1 test images (generated scenes without `../shared`),
# with `metrics.score`, and draws what each rule counted with
# `metrics.explain`. The rules are defined in
# [docs/metrics_variants.md](../docs/metrics_variants.md).

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
import os
import pathlib

import irstd_jax

SMOKE = os.environ.get('IRSTD_NOTEBOOK_SMOKE') == '1'
REPO = pathlib.Path(irstd_jax.__file__).resolve().parents[1]
SIRST = REPO.parent / 'shared' / 'datasets' / 'sirst_v1'  # else generated scenes

NUM_IMAGES = 12 if SMOKE else 86   # test images scored (SIRST-v1's test split has 86)
NUM_SHOWN = 3                      # images drawn rule by rule
THRESHOLD = 0.5                    # a pixel is predicted when its probability is above it

# %% [markdown]
# ## Images, masks and a prediction to score
#
# The images are read as the datasets read them (grey uint8; masks {0, 1}).
# The prediction comes from a classical detector rather than a network, so
# that it has the errors the rules disagree about, without training: a white
# top-hat (the image minus its grey opening over 9x9 pixels: what is brighter
# than its surroundings and smaller than the window) mapped to a
# probability-like value by `1 - exp(-contrast / 40)`.

# %%
import numpy as np
import PIL.Image
from scipy import ndimage

from irstd_jax.datasets import imageio
from irstd_jax.datasets import synthetic


def load_images(count):
  """(names, grey images, masks) of SIRST-v1's test split, or generated scenes."""
  if not SIRST.is_dir():
    scenes = [synthetic.render_scene(synthetic.scene_rng(3, 1, i), 160, 224)
              for i in range(count)]
    return [f'scene_{i:02d}' for i in range(count)], [s[0] for s in scenes], [s[1] for s in scenes]
  names, images, masks = [], [], []
  for name in (SIRST / 'splits' / 'idx_427' / 'test.txt').read_text().split()[:count]:
    image = imageio.read_image(SIRST / 'images' / f'{name}.png')
    mask = imageio.read_mask(SIRST / 'masks' / f'{name}_pixels0.png')
    if image.shape == mask.shape:  # Misc_111's mask has another size
      names.append(name)
      images.append(image)
      masks.append(mask)
  return names, images, masks


def top_hat(image, size=9, scale=40.0):
  grey = image.astype(np.float32)
  contrast = grey - ndimage.grey_opening(grey, size=(size, size))
  return 1 - np.exp(-contrast / scale)


names, images, masks = load_images(NUM_IMAGES)
preds = [top_hat(image) for image in images]
print(f'{len(images)} images, {sum(ndimage.label(m)[1] for m in masks)} targets, '
      f'sizes from {min(i.shape for i in images)} to {max(i.shape for i in images)}')

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 4, figsize=(13, 3))
panels = [(images[0], 'gray', 'image'), (masks[0], 'gray', 'mask'),
          (preds[0], 'magma', 'top-hat probability'),
          (preds[0] > THRESHOLD, 'gray', f'predicted (> {THRESHOLD})')]
for ax, (picture, cmap, title) in zip(axes, panels):
  ax.imshow(picture, cmap=cmap, interpolation='nearest')
  ax.set_title(f'{names[0]}: {title}', fontsize=9)
  ax.axis('off')
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Pixel level: mIoU, nIoU, F1
#
# With P the predicted pixels and T the target pixels:
#
# - **mIoU** (BasicIRSTD): |P ∩ T| / |P ∪ T| with both counts summed over
#   the whole set: large targets weigh more.
# - **nIoU**: the same ratio per image, then averaged: every image weighs the
#   same.
# - **precision** |P ∩ T| / |P|, **recall** |P ∩ T| / |T|, and **F1** their
#   harmonic mean, from counts summed over the set.
#
# `metrics.score` computes every metric of a set of maps of any sizes; the
# hand computation below gives the same numbers.

# %%
from irstd_jax import metrics

scores = metrics.score(preds, masks, THRESHOLD)

inter = np.array([np.sum((p > THRESHOLD) & (m > 0)) for p, m in zip(preds, masks)])
union = np.array([np.sum((p > THRESHOLD) | (m > 0)) for p, m in zip(preds, masks)])
print(f"mIoU  score {scores['miou']:.6f}   by hand {inter.sum() / union.sum():.6f}")
print(f"nIoU  score {scores['niou']:.6f}   by hand {np.mean(inter / union):.6f}")
print(f"precision {scores['precision']:.4f}  recall {scores['recall']:.4f}  "
      f"F1 {scores['f1']:.4f}")

# %% [markdown]
# ## Pixel level over thresholds: the ROC
#
# The ROC sweeps the threshold (0, 0.1, ..., 1, as DNANet's code) and plots
# the true-positive rate of target pixels against the false-positive rate of
# background pixels; the AUC is its area. The Pd-Fa curve does the same at
# target level, under each rule below.

# %%
roc = scores['roc']
curve = scores['pd_fa_curve']
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(roc['fpr'], roc['tpr'], 'o-')
for t, x, y in zip(roc['thresholds'], roc['fpr'], roc['tpr']):
  axes[0].annotate(f'{t:.1f}', (x, y), fontsize=7, xytext=(3, -9), textcoords='offset points')
axes[0].set(title=f"ROC (AUC {scores['auc']:.3f})", xlabel='false-positive rate',
            ylabel='true-positive rate', xscale='log')
for rule, (pd_key, fa_key) in {'distance': ('pd', 'fa'), 'shooting': ('pd_shooting', 'fa_shooting'),
                               'OPDC': ('pd_opdc', 'fa_opdc')}.items():
  axes[1].plot(1e6 * np.asarray(curve[fa_key]), curve[pd_key], 'o-', label=rule)
axes[1].set(title=f"Pd against Fa, thresholds {', '.join(f'{t:.1f}' for t in curve['thresholds'])}",
            xlabel='Fa (false-alarm pixels per million)', ylabel='Pd', xscale='log')
axes[1].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Target level: three rules for "detected"
#
# Targets are the 8-connected components of the mask, predictions those of
# the thresholded map.
#
# - **distance** (BasicIRSTD, DNANet; the GaNet and GGL-Net codes): each
#   target, in label order, takes the first still-free prediction whose
#   centroid is closer than 3 px. Fa counts the pixels of the predictions no
#   target took.
# - **shooting** (DTUM): a target is hit when a predicted pixel lies within
#   1 px of one of its pixels; a predicted pixel is a false alarm when it lies
#   more than 4 px from every target pixel. No one-to-one matching.
# - **OPDC** (the hIoU paper, NeurIPS 2025): a one-to-one assignment on
#   centroid distances, kept where the pair's IoU >= 0.5, then among the
#   unmatched where the distance < 3 px. Fa counts unmatched predictions'
#   pixels.

# %%
RULES = {'distance': ('pd', 'fa'), 'shooting': ('pd_shooting', 'fa_shooting'),
         'opdc': ('pd_opdc', 'fa_opdc')}
for rule, (pd_key, fa_key) in RULES.items():
  print(f'{rule:9s} Pd {100 * scores[pd_key]:6.2f} %   Fa {1e6 * scores[fa_key]:9.1f} per million')

# %% [markdown]
# `metrics.explain(pred, mask)` gives one image's verdicts under every rule:
# which targets count as detected and which pixels as false alarms. The
# images drawn are those where the rules disagree most (about a target, else
# about false-alarm pixels), cut around where they disagree. Target outlines
# are green when the rule counts the target as detected and yellow when it
# counts it as missed; predicted pixels are red when they count as false
# alarms, blue when not.

# %%
from irstd_jax.evaluation import pictures

found = [metrics.explain(p, m, THRESHOLD) for p, m in zip(preds, masks)]


def disputed(f):
  """Targets whose verdict differs between the rules."""
  verdicts = np.stack([f.detected[rule] for rule in RULES])
  return np.flatnonzero(verdicts.any(axis=0) & ~verdicts.all(axis=0))


def disputed_pixels(f):
  """Predicted pixels that some rules count as false alarms and others not."""
  alarms = np.stack([f.false_alarms[rule] for rule in RULES])
  return alarms.any(axis=0) & ~alarms.all(axis=0)


def focus(f):
  """Where to look: a disputed target, else the target nearest to disputed pixels."""
  if len(disputed(f)):
    return int(disputed(f)[0])
  rows, cols = np.nonzero(disputed_pixels(f))
  if not len(rows):
    return 0
  gap = np.hypot(f.target_centroids[:, :1] - rows, f.target_centroids[:, 1:] - cols)
  return int(np.argmin(gap.min(axis=1)))


order = sorted(range(len(found)), key=lambda i: (
    -len(disputed(found[i])), -int(disputed_pixels(found[i]).sum()), i))
shown = [i for i in order if found[i].num_targets][:NUM_SHOWN]


def crop_around(f, target, side=48):
  row, col = np.round(f.target_centroids[target]).astype(int)
  height, width = f.targets.shape
  top = int(np.clip(row - side // 2, 0, max(height - side, 0)))
  left = int(np.clip(col - side // 2, 0, max(width - side, 0)))
  return slice(top, top + side), slice(left, left + side)


def draw(ax, image, f, rule, box):
  grey = pictures.to_gray_uint8(image[box])
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  predicted = f.predicted[box] > 0
  false_alarm = f.false_alarms[rule][box]
  rgb[predicted & ~false_alarm] = pictures.BOX
  rgb[false_alarm] = pictures.FALSE_ALARM
  ax.imshow(rgb, interpolation='nearest')
  labels = f.targets[box]
  for target in np.unique(labels[labels > 0]) - 1:
    colour = pictures.HIT if f.detected[rule][target] else pictures.MISS
    ax.contour(labels == target + 1, levels=[0.5], colors=[np.array(colour) / 255],
               linewidths=1.6)
  ax.set_xticks([])
  ax.set_yticks([])


fig, axes = plt.subplots(len(shown), 4, figsize=(12, 3.1 * len(shown)), squeeze=False)
for row, index in zip(axes, shown):
  f = found[index]
  box = crop_around(f, focus(f))
  row[0].imshow(images[index], cmap='gray')
  row[0].add_patch(plt.Rectangle((box[1].start, box[0].start), box[1].stop - box[1].start,
                                 box[0].stop - box[0].start, fill=False, color='cyan'))
  row[0].set_title(f'{names[index]}: {f.num_targets} target(s), '
                   f'{f.num_predicted} prediction(s)', fontsize=9)
  row[0].axis('off')
  for ax, rule in zip(row[1:], RULES):
    draw(ax, images[index], f, rule, box)
    ax.set_title(f'{rule}: {int(f.detected[rule].sum())}/{f.num_targets} detected, '
                 f'{int(f.false_alarms[rule].sum())} false px', fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# Counted over the set, the verdicts give `score`'s Pd and Fa (OPDC also
# counts an image without targets as one missed target, a convention of
# pyirstdmetrics that this set does not meet when every image has targets):

# %%
pixels = sum(m.size for m in masks)
targets = sum(f.num_targets for f in found)
phantoms = sum(f.num_targets == 0 for f in found)
for rule, (pd_key, fa_key) in RULES.items():
  detected = sum(int(f.detected[rule].sum()) for f in found)
  false_pixels = sum(int(f.false_alarms[rule].sum()) for f in found)
  total = targets + (phantoms if rule == 'opdc' else 0)
  print(f'{rule:9s} Pd {detected}/{total} = {detected / total:.6f} (score {scores[pd_key]:.6f})'
        f'   Fa {false_pixels}/{pixels} = {false_pixels / pixels:.3e} '
        f'(score {scores[fa_key]:.3e})')

# %% [markdown]
# ## hIoU: one number for both levels
#
# The hIoU paper multiplies a segmentation term (the mean IoU of OPDC's
# matched pairs) by a localisation term (matched / (matched + unmatched
# targets + unmatched predictions)), and splits what each term misses into
# error types: merged targets, interference (predicted background),
# perception (missed target pixels) for segmentation; single-to-multiple,
# multiple-to-single, interference and perception for localisation. Each
# term and its errors add up to 1.

# %%
print(f"hIoU {scores['hiou']:.4f} = seg IoU {scores['seg_iou']:.4f} x loc IoU "
      f"{scores['loc_iou']:.4f}   (with the distance matching: {scores['hiou_distance']:.4f})")
for term in ('seg', 'loc'):
  keys = [k for k in scores if k.startswith(f'{term}_') and k.endswith('_err')]
  parts = '  '.join(f'{k} {scores[k]:.4f}' for k in keys)
  print(f"{term}_iou {scores[f'{term}_iou']:.4f} + {parts} = "
        f"{scores[f'{term}_iou'] + sum(scores[k] for k in keys):.4f}")

# %% [markdown]
# ## Which to report
#
# The same maps give a different Pd and Fa under each rule, so a number means
# little without its rule. The training loop, eval mode and
# `python -m irstd_jax.evaluate` report all of them side by side (`pd`,
# `pd_shooting`, `pd_opdc`, `hiou`, ... in `metrics.jsonl` and the eval JSON).
# [docs/metrics_variants.md](../docs/metrics_variants.md) lists which paper
# uses which, with drawn corner cases.
