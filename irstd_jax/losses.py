"""Losses used by the IRSTD papers' codes.

`soft_iou_loss`: SoftIoU (the GaNet and GGL-Net codes, two reductions).
`edge_bce_loss`: PAL's edge-weighted binary cross-entropy over the harder
half of the pixels (YuChuang1205/PAL loss/Edge_loss.py), with `pal_edge_map`.
"""

import jax
import jax.numpy as jnp


def soft_iou_loss(logits: jax.Array, targets: jax.Array, reduction: str = 'batch',
                  smooth: float = 1.0) -> jax.Array:
  """SoftIoU loss, 1 - (|p * t| + smooth) / (|p| + |t| - |p * t| + smooth).

  Args:
    logits: (B, H, W, 1) model outputs before the sigmoid.
    targets: (B, H, W, 1) in {0, 1}.
    reduction: 'batch' sums intersection and union over the whole batch (the
      GaNet code); 'sample' takes the ratio per image and averages it (the
      GGL-Net code). They differ whenever targets differ in size.
    smooth: added to numerator and denominator.

  Returns:
    The scalar loss.
  """
  if logits.shape != targets.shape:
    raise ValueError(f'logits {logits.shape} and targets {targets.shape} differ in shape.')
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  targets = targets.astype(jnp.float32)
  if reduction == 'batch':
    axes = None
  elif reduction == 'sample':
    axes = tuple(range(1, probs.ndim))
  else:
    raise ValueError(f"reduction must be 'batch' or 'sample', got {reduction!r}.")
  inter = jnp.sum(probs * targets, axis=axes)
  union = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes) - inter
  return 1.0 - jnp.mean((inter + smooth) / (union + smooth))


# PAL's edge weight: boundary pixels of the target mask weigh this much in the BCE.
EDGE_WEIGHT = 4.0


def pal_edge_map(targets: jax.Array) -> jax.Array:
  """The boundary pixels PAL weights, as a bool array shaped like `targets`.

  PAL (YuChuang1205/PAL components/edges.py, dataset_final_...py) marks the
  pixels within Euclidean distance 1 of the other class, one-hot per class
  with the mask zero-padded, so: every pixel with a 4-neighbour of the other
  class, plus the whole image border (the padding differs from one class or
  the other there). It then clears row 1 (the code writes `edge[1, :] = 0`,
  where the other three lines clear the last row and the first and last
  columns), so row 0 stays marked: kept, as that is what trained the
  published weights.

  Args:
    targets: (B, H, W, 1) masks in {0, 1}.
  """
  t = targets[..., 0] > 0.5
  padded = jnp.pad(t, ((0, 0), (1, 1), (1, 1)), mode='edge')  # No class change outside.
  center = padded[:, 1:-1, 1:-1]
  neighbours = (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1],
                padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
  edge = jnp.zeros_like(t)
  for neighbour in neighbours:
    edge = edge | (neighbour != center)
  edge = edge.at[:, 0, :].set(True).at[:, -1, :].set(True)
  edge = edge.at[:, :, 0].set(True).at[:, :, -1].set(True)
  edge = edge.at[:, 1, :].set(False).at[:, -1, :].set(False)
  edge = edge.at[:, :, 0].set(False).at[:, :, -1].set(False)
  return edge[..., None]


def edge_bce_loss(logits: jax.Array, targets: jax.Array, *,
                  edge_weight: float = EDGE_WEIGHT,
                  hard_fraction: float = 0.5) -> jax.Array:
  """PAL's loss (`edgeSCE_loss`): edge-weighted BCE on the hardest pixels.

  Binary cross-entropy with logits per pixel, times `edge_weight` on
  `pal_edge_map` pixels; then, over the whole batch, the pixels whose loss is
  at least the value at sorted position floor((1 - hard_fraction) * N)
  (PAL: the median, ties included) are averaged. The threshold is not
  differentiated, as PyTorch's boolean indexing is not.

  Args:
    logits: (B, H, W, 1) model outputs before the sigmoid.
    targets: (B, H, W, 1) in {0, 1}.
    edge_weight: weight of boundary pixels (PAL: 4).
    hard_fraction: share of the sorted losses kept (PAL: 0.5).

  Returns:
    The scalar loss.
  """
  if logits.shape != targets.shape:
    raise ValueError(f'logits {logits.shape} and targets {targets.shape} differ in shape.')
  x = logits.astype(jnp.float32)
  t = targets.astype(jnp.float32)
  # PyTorch's binary_cross_entropy_with_logits, written the stable way.
  bce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
  weighted = (bce * jnp.where(pal_edge_map(targets), edge_weight, 1.0)).reshape(-1)
  cut = int((1.0 - hard_fraction) * weighted.size)
  threshold = jax.lax.stop_gradient(jnp.sort(weighted)[cut])
  keep = weighted >= threshold
  return jnp.sum(jnp.where(keep, weighted, 0.0)) / jnp.sum(keep)
