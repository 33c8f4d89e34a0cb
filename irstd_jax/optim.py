"""The papers' optimizers and learning-rate schedules, built from a config.

Apart from the training loop (`train`) because the benchmarks, the sweeps and
inference build the same optimizer without training.
"""

from __future__ import annotations

import functools

from flax import nnx
import ml_collections
import optax


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """The learning rate per step: the papers' drops, or cosine with warm-up.

  'multistep' (the papers'): multiplied by `schedule.decay_factor` from the
  first step of each epoch in `schedule.decay_epochs` (0-based epoch counts,
  as PyTorch's MultiStepLR stepped once per epoch). 'cosine': linear warm-up
  over `schedule.warmup_epochs` from 0, then cosine decay to
  `schedule.end_fraction` of the peak at the last step (short CPU runs).
  """
  name = config.schedule.get('name', 'multistep')
  peak = float(config.optimizer.learning_rate)
  if name == 'cosine':
    total = int(config.schedule.num_epochs) * steps_per_epoch
    warmup = min(total - 1, int(round(config.schedule.warmup_epochs * steps_per_epoch)))
    return _warmup_cosine(peak, warmup, total, float(config.schedule.end_fraction))
  if name != 'multistep':
    raise ValueError(
        f"schedule.name must be 'multistep' or 'cosine', got {name!r}.")
  scales: dict[int, float] = {}
  for epoch in config.schedule.decay_epochs:
    if 0 < epoch < config.schedule.num_epochs:
      step = int(epoch) * steps_per_epoch
      scales[step] = scales.get(step, 1.0) * config.schedule.decay_factor
  return _piecewise_constant(peak, tuple(sorted(scales.items())))


# Schedules and transformations are cached by value: the optimizer's graph
# definition holds them, and equal graph definitions let a second run in the
# same process (a resumed run, eval after train, tests) reuse the compiled step.
@functools.lru_cache(maxsize=None)
def _piecewise_constant(init_value: float, boundaries_and_scales: tuple) -> optax.Schedule:
  return optax.piecewise_constant_schedule(init_value, dict(boundaries_and_scales))


@functools.lru_cache(maxsize=None)
def _warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                   end_fraction: float) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps, total_steps, end_value=peak * end_fraction)


@functools.lru_cache(maxsize=None)
def _transformation(name: str, learning_rate_fn: optax.Schedule, b1: float, b2: float,
                    eps: float, weight_decay: float, momentum: float
                    ) -> optax.GradientTransformation:
  if name == 'adam' and not weight_decay:
    return optax.adam(learning_rate_fn, b1=b1, b2=b2, eps=eps)
  if name in ('adam', 'adamw'):
    return optax.adamw(learning_rate_fn, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if name == 'sgd':
    return optax.sgd(learning_rate_fn, momentum=momentum)
  raise ValueError(f"optimizer.name must be 'adam', 'adamw' or 'sgd', got {name!r}.")


def create_optimizer(model: nnx.Module, config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> nnx.Optimizer:
  """Adam (the papers' choice), AdamW or SGD over the model's parameters."""
  opt = config.optimizer
  tx = _transformation(opt.name, learning_rate_fn, float(opt.b1), float(opt.b2),
                       float(opt.eps), float(opt.weight_decay),
                       float(opt.get('momentum', 0.9)))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)
