"""Losses used by the IRSTD papers."""

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
