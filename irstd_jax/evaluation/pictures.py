"""Pictures of predictions: TensorBoard panels and PNG overlays.

Both crop padded images back to their valid region, so what is shown is what
the metrics scored.
"""

from __future__ import annotations

import os
import re

import numpy as np

# Overlay colours (RGB): hits, false alarms, misses.
HIT = (0, 220, 0)
FALSE_ALARM = (255, 40, 40)
MISS = (255, 200, 0)
# Detections without ground truth: target boxes and their scores.
BOX = (0, 200, 255)


def valid_box(valid: np.ndarray) -> tuple[slice, slice]:
  """The bounding box of the True pixels of an (H, W) validity mask."""
  rows, cols = np.any(valid, axis=1), np.any(valid, axis=0)
  if not rows.any():
    return slice(0, 0), slice(0, 0)
  r = np.flatnonzero(rows)
  c = np.flatnonzero(cols)
  return slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
  """(H, W, C) normalised network input -> (H, W) uint8, min-max stretched."""
  image = np.asarray(image, np.float32)
  gray = image.mean(axis=-1) if image.ndim == 3 else image
  lo, hi = float(gray.min()), float(gray.max())
  scale = 255.0 / (hi - lo) if hi > lo else 0.0
  return np.clip((gray - lo) * scale, 0, 255).astype(np.uint8)


def panel(image: np.ndarray, mask: np.ndarray, prob: np.ndarray,
          valid: np.ndarray) -> np.ndarray:
  """Input | ground truth | predicted probability, side by side, (H, 3W, 1) uint8."""
  rows, cols = valid_box(valid)
  gray = to_gray_uint8(image[rows, cols])
  truth = (np.asarray(mask)[rows, cols] > 0).astype(np.uint8) * 255
  pred = np.clip(np.asarray(prob, np.float32)[rows, cols] * 255, 0, 255).astype(np.uint8)
  separator = np.full((gray.shape[0], 2), 128, np.uint8)
  return np.concatenate([gray, separator, truth, separator, pred], axis=1)[..., None]


def overlay(image: np.ndarray, mask: np.ndarray, prob: np.ndarray,
            valid: np.ndarray, threshold: float = 0.5) -> np.ndarray:
  """The input in gray with hits green, false alarms red and misses yellow, (H, W, 3)."""
  rows, cols = valid_box(valid)
  gray = to_gray_uint8(image[rows, cols])
  truth = np.asarray(mask)[rows, cols] > 0
  pred = np.asarray(prob)[rows, cols] > threshold
  rgb = np.repeat(gray[..., None], 3, axis=-1)
  for where, colour in ((pred & truth, HIT), (pred & ~truth, FALSE_ALARM),
                        (~pred & truth, MISS)):
    rgb[where] = colour
  return rgb


def detections(gray: np.ndarray, mask: np.ndarray, targets) -> np.ndarray:
  """A (H, W) uint8 image with the predicted pixels green and each target boxed.

  Each box (a pixel outside the target) carries the target's peak
  probability; `targets` are `inference.find_targets` dicts.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rgb = np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1)
  rgb[np.asarray(mask, bool)] = HIT
  image = Image.fromarray(rgb)
  draw = ImageDraw.Draw(image)
  height, width = rgb.shape[:2]
  for target in targets:
    left, top = target['x'] - 1, target['y'] - 1
    right, bottom = target['x'] + target['width'], target['y'] + target['height']
    draw.rectangle((left, top, right, bottom), outline=BOX)
    text = f"{target['peak_prob']:.2f}"
    x = min(max(left, 0), max(width - 6 * len(text), 0))
    y = top - 11 if top >= 11 else min(bottom + 2, max(height - 11, 0))
    draw.text((x, y), text, fill=BOX)
  return np.asarray(image)


def save_png(path: str, array: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(np.asarray(array).squeeze()).save(path)


def safe_name(name) -> str:
  """An image id (str or bytes) as a file name."""
  if isinstance(name, bytes):
    name = name.decode('utf-8', 'replace')
  return re.sub(r'[^A-Za-z0-9._-]+', '_', str(name)) or 'image'


# Overlays smaller than this (longest side) are enlarged, nearest neighbour.
READABLE_SIDE = 256


def readable(rgb: np.ndarray, min_side: int = READABLE_SIDE) -> np.ndarray:
  """An overlay enlarged by a whole factor (nearest) to `min_side`, with a legend below.

  Small targets in small images are a few pixels: enlarged without smoothing,
  every pixel stays one colour, and the legend says what the colours mean.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  factor = max(1, -(-min_side // max(rgb.shape[:2])))
  big = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
  width = max(big.shape[1], 240)
  canvas = Image.new('RGB', (width, big.shape[0] + 18), (0, 0, 0))
  canvas.paste(Image.fromarray(big), (0, 0))
  draw = ImageDraw.Draw(canvas)
  x = 4
  for label, colour in (('hit', HIT), ('false alarm', FALSE_ALARM), ('miss', MISS)):
    draw.rectangle([x, big.shape[0] + 5, x + 9, big.shape[0] + 14], fill=colour)
    draw.text((x + 13, big.shape[0] + 4), label, fill=(255, 255, 255))
    x += 20 + 7 * len(label)
  return np.asarray(canvas)
