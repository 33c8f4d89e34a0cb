"""Adversarial prediction / mask sets for the metric variants' tests.

Plain NumPy (1.x and 2.x), so that tests/fixtures/make_pyirstdmetrics_cases.py
can score the very same sets with pyirstdmetrics in a numpy < 2 environment.
Each image is small; every case is drawn by hand to hit one rule's edge.
"""

import hashlib

import numpy as np

SHAPE = (32, 40)


def _image():
  return np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.uint8)


def merge():
  """One prediction covers two targets (a merge error): its centroid is 2.5 px
  from both; the first target takes it, the second is a single-to-multiple
  error, and the pixels on the second are merge error of the first."""
  pred, mask = _image()
  mask[9:12, 9:12] = mask[9:12, 14:17] = 1
  pred[9:12, 9:17] = 0.9
  mask[25:28, 3:6] = mask[25:28, 12:15] = 1
  pred[25:28, 3:15] = 0.9  # Centroid 4.5 px from both: no match at all.
  return pred, mask


def split():
  """Two predictions on one target (a split error)."""
  pred, mask = _image()
  mask[18:23, 18:23] = 1
  pred[18:23, 17:20] = 0.8
  pred[18:23, 21:24] = 0.6
  return pred, mask


def empty():
  return _image()


def targets_only():
  pred, mask = _image()
  mask[5, 5] = mask[20:22, 30:33] = 1
  pred[25, 5] = 0.4  # Below 0.5: nothing predicted at the threshold.
  return pred, mask


def predictions_only():
  pred, mask = _image()
  pred[3:5, 3:5] = 0.9
  pred[20, 30] = 0.55
  return pred, mask


def at_thresholds():
  """Values exactly at the thresholds are negative (strict >)."""
  pred, mask = _image()
  mask[4:7, 4:7] = mask[20, 20] = mask[10, 30] = 1
  pred[4:7, 4:7] = 0.5
  pred[5, 5] = np.nextafter(np.float32(0.5), np.float32(1))
  pred[20, 20] = np.float32(0.3)
  pred[10, 30] = np.float32(0.7)
  pred[10, 31] = np.nextafter(np.float32(0.7), np.float32(1))
  return pred, mask


def distance_three():
  """Centroids exactly 3 px apart do not match (distance < 3)."""
  pred, mask = _image()
  mask[5, 5] = mask[20, 10] = 1
  pred[5, 8] = 0.9     # Exactly 3 px: no match; shooting box 1: missed.
  pred[22, 12] = 0.9   # sqrt(8) < 3: a match.
  return pred, mask


def iou_half():
  """IoU exactly 0.5 (and 0.6) with centroids 4-5 px apart: OPDC's overlap
  step matches them, distance-only matching does not."""
  pred, mask = _image()
  mask[5, 5:25] = 1
  pred[5, 5:15] = 0.9    # IoU 10 / 20, distance 5.
  mask[15, 5:25] = 1
  pred[15, 5:17] = 0.9   # IoU 12 / 20, distance 4.
  mask[25, 5:9] = 1
  pred[25, 5:7] = 0.9    # IoU 0.5 and distance 1.
  return pred, mask


def shooting_boxes():
  """The shooting rule's boxes: hit at Chebyshev 1, false alarm beyond 4."""
  pred, mask = _image()
  mask[15, 15] = 1
  pred[16, 16] = 0.9   # Diagonal neighbour: a hit.
  pred[15, 19] = 0.9   # Chebyshev 4: inside the box of radius 4.
  pred[11, 11] = 0.9   # Chebyshev 4 diagonally.
  pred[15, 20] = 0.9   # Chebyshev 5: a false alarm.
  mask[2, 30] = 1
  pred[4, 30] = 0.9    # Chebyshev 2: the target is missed.
  return pred, mask


def borders():
  pred, mask = _image()
  mask[0, 0] = mask[31, 39] = mask[0:3, 39] = 1
  pred[1, 1] = pred[31, 37] = 0.9
  pred[0:2, 38] = 0.7
  return pred, mask


def global_assignment():
  """A far prediction changes OPDC's assignment of two near targets.

  The optimal assignment on distances pairs target A with the far pred q and
  target B with p, although p overlaps A (IoU 2/3): OPDC then keeps only
  B-p (distance 2), while distance-only matching takes A-p.
  """
  pred, mask = _image()
  mask[10:12, 20:22] = 1          # A
  mask[10:12, 23] = 1             # B
  pred[10:12, 20:23] = 0.9        # p
  pred[10, 2] = 0.9               # q
  return pred, mask


def crowd():
  """Several targets and predictions close together (a real assignment)."""
  pred, mask = _image()
  for r, c in ((8, 8), (8, 12), (12, 8), (12, 12), (8, 16)):
    mask[r, c] = 1
  for r, c in ((9, 10), (10, 13), (13, 9), (7, 15), (10, 17)):
    pred[r, c] = 0.8
  mask[20:23, 25:28] = 1
  pred[21, 24:30] = 0.7
  pred[19, 26] = 0.9
  return pred, mask


HAND_MADE = (merge, split, empty, targets_only, predictions_only,
             at_thresholds, distance_three, iou_half, shooting_boxes, borders,
             global_assignment, crowd)


def hand_made():
  """The hand-drawn images, each with a name."""
  return [(f.__name__,) + f() for f in HAND_MADE]


def clustered(seed: int, count: int):
  """Random images of mixed sizes with clustered targets and predictions.

  Targets come in groups, predictions are shifted, grown, merged or split
  copies, plus noise and values exactly at 0.5: the matchings see crowds.
  """
  rng = np.random.default_rng(seed)
  preds, masks = [], []
  for _ in range(count):
    shape = tuple(int(s) for s in rng.integers(16, 72, 2))
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    mask = np.zeros(shape, np.uint8)
    pred = (rng.uniform(0, 0.2, shape) ** 3).astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
      center = rng.uniform(0, shape)
      for _ in range(int(rng.integers(1, 4))):
        c = center + rng.normal(0, 4, 2)
        r = rng.uniform(0.5, 2.5)
        mask[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r] = 1
        if rng.uniform() < 0.8:
          c2 = c + rng.normal(0, 1.5, 2)
          r2 = r * rng.uniform(0.6, 1.8)
          blob = (yy - c2[0]) ** 2 + (xx - c2[1]) ** 2 <= r2 * r2
          pred = np.maximum(pred, blob * np.float32(rng.uniform(0.35, 1)))
    noise = rng.uniform(size=shape) < 0.004
    pred[noise] = rng.uniform(0.3, 1, int(noise.sum()))
    pred[rng.uniform(size=shape) < 0.003] = 0.5
    preds.append(pred.astype(np.float32))
    masks.append(mask)
  return preds, masks


def sets():
  """The sets scored by pyirstdmetrics, by name: (preds, masks)."""
  drawn = hand_made()
  out = {f'hand/{name}': ([pred], [mask]) for name, pred, mask in drawn}
  out['hand_all'] = ([p for _, p, _ in drawn], [m for _, _, m in drawn])
  for seed in (0, 1):
    out[f'clustered_{seed}'] = clustered(seed, 24)
  return out


def digest(preds, masks) -> str:
  """sha256 over a set's bytes (float32 predictions, uint8 masks)."""
  h = hashlib.sha256()
  for pred, mask in zip(preds, masks):
    h.update(np.ascontiguousarray(pred, np.float32).tobytes())
    h.update(np.ascontiguousarray(mask, np.uint8).tobytes())
  return h.hexdigest()
