"""The jitted training step (the evaluation step is in `irstd_jax.evaluation`).

They are module-level functions with the graph definitions as static
arguments, jitted once per platform (`jitted`), so that runs of the same
model in one process (a resumed run, eval after train, tests, notebooks)
share one compilation. The training state is {'model': ..., 'opt': ...}
(plus 'ema', the weights' moving average, with `optimizer.ema_decay`) of
pure dicts of arrays (`nnx.to_pure_dict`), which is also what checkpoints
store: jax flattens plain dicts in C++, while an `nnx.State` of Variables
costs milliseconds of Python on every call. The state is
replicated over the mesh; batches are sharded on its 'data' axis and XLA
inserts the all-reduces (gradients, batch-norm statistics over the global
batch).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from irstd_jax import losses
from irstd_jax import sharding


LOSSES = ('softiou', 'edge_bce')


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array],
            loss_options: tuple[str, str, float]) -> jax.Array:
  """The config's loss of the model's logits against the batch's masks.

  `loss_options` is (name, reduction, smooth): 'softiou' (the GaNet and
  GGL-Net codes; reduction and smooth apply) or 'edge_bce' (PAL's
  edge-weighted BCE on the harder half of the pixels; `losses.edge_bce_loss`).
  """
  name, reduction, smooth = loss_options
  logits = model(batch['image'])
  if name == 'edge_bce':
    return losses.edge_bce_loss(logits, batch['mask'])
  if name != 'softiou':
    raise ValueError(f'loss.name must be one of {LOSSES}, got {name!r}.')
  return losses.soft_iou_loss(logits, batch['mask'], reduction=reduction, smooth=smooth)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Pins a jitted function's outputs to be replicated over `mesh`."""
  return jax.lax.with_sharding_constraint(tree, sharding.replicated(mesh))


def compiler_options(platform: str) -> dict[str, str] | None:
  """XLA options for the steps' executables on `platform`.

  XLA:CPU hands convolutions to YNNPACK by default, whose weight-gradient
  convolution (a reduction over batch and space into a small kernel) is much
  slower than XLA's own on this project's layer shapes, while forward and
  input-gradient convolutions are as fast either way: keep YNNPACK to matrix
  products (docs/performance.md).
  """
  if platform == 'cpu':
    return {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
  return None


@functools.cache
def jitted(fn: Callable[..., Any], platform: str, donate_argnums: tuple[int, ...] = (),
           static_argnames: tuple[str, ...] = ()) -> Callable[..., Any]:
  """`jax.jit(fn)` with `compiler_options(platform)`, one per (fn, platform)."""
  return jax.jit(fn, donate_argnums=donate_argnums, static_argnames=static_argnames,
                 compiler_options=compiler_options(platform))


def ema_decay(config: ml_collections.ConfigDict) -> float:
  """The config's weight-averaging decay (0: no average kept)."""
  decay = float(config.optimizer.get('ema_decay', 0.0) or 0.0)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'optimizer.ema_decay={decay} must be in [0, 1) (0: off; '
                     'e.g. 0.99 averages over about the last 100 steps).')
  return decay


def update_ema(ema: Any, weights: Any, decay: float, count: jax.Array) -> Any:
  """One step of the weights' moving average, after `count` optimizer steps.

  The decay ramps up as min(decay, (1 + count) / (10 + count)) (TensorFlow's
  ExponentialMovingAverage with num_updates), so that early evaluations do
  not average in the random initialisation. Non-float leaves are copied.
  """
  count = count.astype(jnp.float32)
  rate = jnp.minimum(decay, (1.0 + count) / (10.0 + count))

  def mix(average, value):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      return value
    return (rate * average + (1.0 - rate) * value).astype(value.dtype)

  return jax.tree.map(mix, ema, weights)


def eval_weights(state: dict[str, Any]) -> Any:
  """The weights to evaluate: the moving average where one is kept."""
  return state['ema'] if 'ema' in state else state['model']


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *,
               graphdefs: tuple[Any, Any], loss_options: tuple[str, str, float],
               mesh: jax.sharding.Mesh, ema: float = 0.0
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: {'model': pure dict, 'opt': pure dict[, 'ema': pure dict]},
      replicated; donated, so XLA updates it in place.
    batch: image (B, S, S, C) and mask (B, S, S, 1), sharded on 'data'.
    graphdefs: the model's (train mode) and the optimizer's graph definitions.
    loss_options: (name, reduction, smooth) of the loss (`loss_fn`).
    mesh: the device mesh.
    ema: the moving average's decay; `state` holds 'ema' exactly when > 0.

  Returns:
    The new state and {'loss', 'grad_norm'}, all replicated.
  """
  model = nnx.merge(graphdefs[0], state['model'])
  optimizer = nnx.merge(graphdefs[1], state['opt'])
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch, loss_options)
  optimizer.update(model, grads)
  outputs = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  new_state = {'model': nnx.to_pure_dict(nnx.state(model)),
               'opt': nnx.to_pure_dict(nnx.state(optimizer))}
  if ema:
    # optimizer.step counts the updates made, this one included.
    new_state['ema'] = update_ema(state['ema'], new_state['model'], ema,
                                  optimizer.step[...] - 1)
  return replicate((new_state, outputs), mesh)


def make_train_step(model: nnx.Module, optimizer: nnx.Optimizer,
                    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
                    stacked: bool = False) -> tuple[Callable[..., Any], dict[str, Any]]:
  """Splits model and optimizer and binds the train step to them and to `mesh`.

  Args:
    model: the model in train mode.
    optimizer: its optimizer.
    config: the run's config (its loss and `optimizer.ema_decay`).
    mesh: the device mesh; state is replicated, batches sharded on 'data'.
    stacked: the step trains models stacked along a leading axis of the state
      and of the batch (seeds, `stack`), `jax.vmap` of the single step.

  Returns:
    `step(state, batch) -> (state, outputs)` and the initial state of
    `model` and `optimizer`, replicated on `mesh`.
  """
  step = functools.partial(
      jitted(stacked_train_step if stacked else train_step, mesh.devices.flat[0].platform,
             donate_argnums=(0,),
             static_argnames=('graphdefs', 'loss_options', 'mesh', 'ema')),
      graphdefs=(nnx.graphdef(model), nnx.graphdef(optimizer)),
      loss_options=(config.loss.get('name', 'softiou'), config.loss.reduction,
                    float(config.loss.smooth)), mesh=mesh, ema=ema_decay(config))
  return step, create_state(model, optimizer, mesh, ema=bool(ema_decay(config)))


def stacked_train_step(state: dict[str, Any], batch: dict[str, jax.Array], **kwargs
                       ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """`train_step` for every model of a stacked state, on its own batch (leading axis)."""
  return jax.vmap(functools.partial(train_step, **kwargs))(state, batch)


def stack(states: list[Any], mesh: jax.sharding.Mesh) -> Any:
  """Trees of equal structure -> one tree with a leading axis, replicated on `mesh`."""
  stacked = jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *states)
  return jax.device_put(stacked, sharding.replicated(mesh))


def unstack(state: Any, index: int) -> Any:
  """Member `index` of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[index], state)


def stack_batches(batches: list[dict[str, Any]]) -> dict[str, Any]:
  """Host batches of the stacked models -> one batch with a leading axis."""
  return {key: np.stack([b[key] for b in batches])
          for key, value in batches[0].items() if isinstance(value, np.ndarray)}


def create_state(model: nnx.Module, optimizer: nnx.Optimizer,
                 mesh: jax.sharding.Mesh, *, ema: bool = False) -> dict[str, Any]:
  """The training state {'model', 'opt'} as pure dicts, replicated on `mesh`.

  With `ema`, also 'ema': the weights' moving average, starting at the model.
  """
  state = {'model': nnx.to_pure_dict(nnx.state(model)),
           'opt': nnx.to_pure_dict(nnx.state(optimizer))}
  if ema:
    state['ema'] = jax.tree.map(jnp.copy, state['model'])
  return jax.device_put(state, sharding.replicated(mesh))
