"""Procedural infrared small-target scenes, in the spirit of NUDT-SIRST.

A scene is a background made from filtered (1/f^beta) noise, one to a few
small Gaussian targets and sensor noise:

* backgrounds: `cloud` (smooth bright cloud banks on a sky gradient),
  `ground` (rougher texture with a few linear edges such as roads),
  `sea` (horizontally stretched wave texture below a horizon) and `clutter`
  (cloud or ground plus bright blobs of 100 to 600 pixels, larger than any
  target, that tempt false alarms);
* targets: 1 to `max_targets` elliptical Gaussians whose half-maximum area
  (the mask) is 1 to ~80 pixels, log-uniformly, aspect 1 to 2, contrast 2.5
  to 12 times the local clutter / noise level;
* sensor noise: white Gaussian (sigma 0.8 to 3.5 grey levels) and, in a
  third of the scenes, column fixed-pattern noise.

The mask marks where a target reaches half its own peak. Everything is a
function of the numpy Generator passed in, so a seed reproduces a scene.
"""

from __future__ import annotations

import numpy as np

BACKGROUNDS = ('cloud', 'ground', 'sea', 'clutter')
_HALF_MAX_AREA_PER_SIGMA2 = 2 * np.pi * np.log(2)  # area = this * sa * sb


def filtered_noise(rng: np.random.Generator, height: int, width: int,
                   exponent: float, stretch: tuple[float, float] = (1., 1.)
                   ) -> np.ndarray:
  """Zero-mean, unit-std noise with a 1/f^exponent amplitude spectrum.

  `stretch` scales the frequency axes (y, x): a larger x factor damps
  horizontal frequencies, giving horizontally elongated structures.
  """
  freq_y = np.fft.fftfreq(height)[:, None] * stretch[0]
  freq_x = np.fft.rfftfreq(width)[None, :] * stretch[1]
  radius = np.sqrt(freq_y ** 2 + freq_x ** 2)
  radius[0, 0] = np.inf
  shape = (height, width // 2 + 1)
  spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
  field = np.fft.irfft2(spectrum / radius ** exponent, s=(height, width))
  field -= field.mean()
  return field / (field.std() + 1e-12)


def _gaussian(height, width, center, sigmas, angle):
  """An elliptical Gaussian (peak 1) on the full (height, width) grid."""
  y, x = np.ogrid[:height, :width]
  dy, dx = y - center[0], x - center[1]
  cos, sin = np.cos(angle), np.sin(angle)
  u = dx * cos + dy * sin
  v = -dx * sin + dy * cos
  return np.exp(-0.5 * ((u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2))


def _cloud(rng, h, w):
  level = rng.uniform(50, 110)
  clouds = np.clip(filtered_noise(rng, h, w, rng.uniform(1.6, 2.0))
                   - rng.uniform(-0.5, 0.8), 0, None)
  gradient = rng.uniform(-20, 20) * (np.arange(h)[:, None] / h - 0.5)
  return (level + rng.uniform(25, 70) * clouds / (clouds.max() + 1e-6)
          + gradient + 2.0 * filtered_noise(rng, h, w, 1.0))


def _ground(rng, h, w):
  level = rng.uniform(70, 150)
  background = (level + rng.uniform(12, 30) * filtered_noise(rng, h, w, 1.3)
                + rng.uniform(3, 8) * filtered_noise(rng, h, w, 0.8))
  y, x = np.mgrid[:h, :w]
  for _ in range(rng.integers(1, 4)):  # Roads, field edges.
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(0, h) * np.cos(angle) + rng.uniform(0, w) * np.sin(
        angle)
    distance = y * np.cos(angle) + x * np.sin(angle) - offset
    width = rng.uniform(0.8, 3.0)
    background += rng.uniform(-30, 30) * np.exp(-0.5 * (distance / width) ** 2)
  return background


def _sea(rng, h, w):
  horizon = int(rng.uniform(0.1, 0.45) * h)
  rows = np.arange(h)[:, None]
  sky = rng.uniform(60, 120) + 6 * filtered_noise(rng, h, w, 1.8)
  sea_level = rng.uniform(40, 100)
  # Brighter towards the horizon (grazing angle), waves stretched along x.
  sea = (sea_level + rng.uniform(10, 30) * np.exp(-(rows - horizon) / (0.3 * h))
         + rng.uniform(5, 15) * filtered_noise(rng, h, w, 1.5, (1.0, 6.0)))
  blend = 1 / (1 + np.exp(-(rows - horizon) / 1.5))
  return sky * (1 - blend) + sea * blend


def _clutter(rng, h, w):
  background = (_cloud if rng.random() < 0.5 else _ground)(rng, h, w)
  for _ in range(rng.integers(3, 9)):
    area = rng.uniform(100, 600)
    aspect = rng.uniform(1, 4)
    sigma_product = area / _HALF_MAX_AREA_PER_SIGMA2
    sigmas = (np.sqrt(sigma_product * aspect), np.sqrt(sigma_product / aspect))
    center = (rng.uniform(0, h), rng.uniform(0, w))
    background += rng.uniform(20, 80) * _gaussian(h, w, center, sigmas,
                                                  rng.uniform(0, np.pi))
  return background


_MAKERS = {'cloud': _cloud, 'ground': _ground, 'sea': _sea,
           'clutter': _clutter}


def render_scene(rng: np.random.Generator, height: int, width: int, *,
                 max_targets: int = 4) -> tuple[np.ndarray, np.ndarray, str]:
  """One scene: (image (H, W) uint8, mask (H, W) uint8 {0, 1}, background)."""
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  background = _MAKERS[kind](rng, height, width)
  image = background.copy()
  mask = np.zeros((height, width), np.uint8)
  weights = np.array([0.45, 0.3, 0.15, 0.1][:max_targets])
  count = 1 + rng.choice(len(weights), p=weights / weights.sum())
  placed = []  # (y, x, radius)
  noise_sigma = rng.uniform(0.8, 3.5)
  for _ in range(count):
    area = np.exp(rng.uniform(0.0, np.log(80.0)))
    aspect = rng.uniform(1.0, 2.0)
    sigma_product = area / _HALF_MAX_AREA_PER_SIGMA2
    sigmas = (max(np.sqrt(sigma_product * aspect), 0.35),
              max(np.sqrt(sigma_product / aspect), 0.35))
    radius = int(np.ceil(3 * sigmas[0])) + 1
    for _ in range(50):  # Keep targets apart (distinct components).
      cy = rng.uniform(radius + 1, height - radius - 1)
      cx = rng.uniform(radius + 1, width - radius - 1)
      if all(np.hypot(cy - y, cx - x) > radius + r + 3 for y, x, r in placed):
        break
    else:
      continue
    placed.append((cy, cx, radius))
    y0, y1 = int(cy) - radius, int(cy) + radius + 1
    x0, x1 = int(cx) - radius, int(cx) + radius + 1
    profile = _gaussian(y1 - y0, x1 - x0, (cy - y0, cx - x0), sigmas,
                        rng.uniform(0, np.pi))
    local = background[max(y0 - 4, 0):y1 + 4, max(x0 - 4, 0):x1 + 4]
    contrast = np.exp(rng.uniform(np.log(2.5), np.log(12.0)))
    amplitude = np.clip(contrast * max(local.std(), noise_sigma), 10, 200)
    image[y0:y1, x0:x1] += amplitude * profile
    mask[y0:y1, x0:x1] |= (profile >= 0.5 * profile.max()).astype(np.uint8)
  image += noise_sigma * rng.standard_normal((height, width))
  if rng.random() < 1 / 3:
    image += rng.uniform(0.5, 2.0) * rng.standard_normal((1, width))
  return np.clip(np.round(image), 0, 255).astype(np.uint8), mask, kind


def scene_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
  """The Generator of scene `index` of a split: independent of the counts."""
  return np.random.default_rng(
      np.random.SeedSequence(seed, spawn_key=(split_index, index)))
