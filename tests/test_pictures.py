"""Prediction pictures: colours, enlargement and legend."""

import numpy as np

from irstd_jax.evaluation import pictures


def test_small_overlays_are_enlarged_by_a_whole_factor_with_a_legend():
  image = np.zeros((64, 48, 1), np.float32)
  mask = np.zeros((64, 48))
  mask[10, 10] = 1
  prob = np.zeros((64, 48))
  prob[10, 10] = prob[30, 30] = 0.9
  rgb = pictures.overlay(image, mask, prob, np.ones((64, 48), bool))
  assert tuple(rgb[10, 10]) == pictures.HIT and tuple(rgb[30, 30]) == pictures.FALSE_ALARM
  big = pictures.readable(rgb)
  assert big.shape == (64 * 4 + 18, 240, 3)  # Factor 4 reaches 256; legend strip below.
  np.testing.assert_array_equal(big[40:44, 40:44], np.broadcast_to(pictures.HIT, (4, 4, 3)))
  legend = big[64 * 4:]
  for colour in (pictures.HIT, pictures.FALSE_ALARM, pictures.MISS):
    assert np.all(legend == colour, axis=-1).any()
  large = np.zeros((300, 400, 3), np.uint8)
  assert pictures.readable(large).shape == (318, 400, 3)  # Large enough: not enlarged.
