"""The jitted steps: one training step, one evaluation step, predictions.

They are module-level functions with the graph definitions as static
arguments, jitted once per platform (`jitted`), so that runs of the same
model in one process (a resumed run, eval after train, tests, notebooks)
share one compilation. The training state is {'model': ..., 'opt': ...} of
pure dicts of arrays (`nnx.to_pure_dict`), which is also what checkpoints
store: jax flattens plain dicts in C++, while an `nnx.State` of Variables
costs 10-25 ms of Python per call for GaNet / GGL-Net. The state is
replicated over the mesh; batches are sharded on its 'data' axis and XLA
inserts the all-reduces (gradients, batch-norm statistics over the global
batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from flax import nnx
import jax
import ml_collections
import optax

from irstd_jax import losses
from irstd_jax import sharding


def loss_fn(model: nnx.Module, batch: dict[str, jax.Array], reduction: str,
            smooth: float) -> jax.Array:
  """SoftIoU of the model's logits against the batch's masks."""
  return losses.soft_iou_loss(model(batch['image']), batch['mask'],
                              reduction=reduction, smooth=smooth)


def _replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Pins a jitted function's outputs to be replicated over `mesh`."""
  return jax.lax.with_sharding_constraint(tree, sharding.replicated(mesh))


def compiler_options(platform: str) -> dict[str, str] | None:
  """XLA options for the steps' executables on `platform`.

  XLA:CPU hands convolutions to YNNPACK by default. For the weight gradient
  (a reduction over batch and space into a small kernel) YNNPACK ran 2-7x
  slower than XLA's own convolution on this project's layer shapes, while
  forward and input-gradient convolutions were as fast either way; keeping
  only matrix products in YNNPACK made the GGL-Net train step at 512x512
  1.9x faster (benchmarks in README.md, Performance).
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


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *,
               graphdefs: tuple[Any, Any], loss_options: tuple[str, float],
               mesh: jax.sharding.Mesh) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimizer step on a global batch.

  Args:
    state: {'model': pure dict, 'opt': pure dict}, replicated; donated, so
      XLA updates it in place.
    batch: image (B, S, S, C) and mask (B, S, S, 1), sharded on 'data'.
    graphdefs: the model's (train mode) and the optimizer's graph definitions.
    loss_options: SoftIoU (reduction, smooth).
    mesh: the device mesh.

  Returns:
    The new state and {'loss', 'grad_norm'}, all replicated.
  """
  model = nnx.merge(graphdefs[0], state['model'])
  optimizer = nnx.merge(graphdefs[1], state['opt'])
  reduction, smooth = loss_options
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch, reduction, smooth)
  optimizer.update(model, grads)
  outputs = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  new_state = {'model': nnx.to_pure_dict(nnx.state(model)),
               'opt': nnx.to_pure_dict(nnx.state(optimizer))}
  return _replicate((new_state, outputs), mesh)


def eval_step(model_state: Any, stats: Any, batch: dict[str, jax.Array], *,
              graphdef: Any, threshold: float, pd_fa_relative: bool,
              mesh: jax.sharding.Mesh) -> Any:
  """Adds a batch to the metrics' sufficient statistics (nothing is gathered).

  Args:
    model_state: the model's state (pure dict).
    stats: from `metrics.init`, replicated; donated.
    batch: image (B, H, W, C), mask (B, H, W), valid (B, H, W), sharded.
    graphdef: the model's graph definition in eval mode.
    threshold: probability threshold (strict >).
    pd_fa_relative: GaNet code's Pd/Fa, thresholding each map divided by its
      maximum (IoU stays absolute); False is BasicIRSTD's absolute threshold.
    mesh: the device mesh.

  Returns:
    The updated statistics, replicated.
  """
  from irstd_jax import metrics  # pylint: disable=g-import-not-at-top
  probs = predict_probs(nnx.merge(graphdef, model_state), batch['image'])
  return _replicate(metrics.update(stats, probs, batch['mask'], batch['valid'],
                                   threshold=threshold, pd_fa_relative=pd_fa_relative),
                    mesh)


def predict(model_state: Any, images: jax.Array, *, graphdef: Any,
            mesh: jax.sharding.Mesh) -> jax.Array:
  """Probabilities (B, H, W), gathered on every host: only for a few pictures."""
  return _replicate(predict_probs(nnx.merge(graphdef, model_state), images), mesh)


def predict_probs(model: nnx.Module, images: jax.Array) -> jax.Array:
  return jax.nn.sigmoid(model(images))[..., 0]


@dataclasses.dataclass
class Program:
  """A run's jitted steps with their static arguments bound.

  The training state is {'model': pure dict, 'opt': pure dict}; the
  eval-mode model (running batch-norm statistics) has its own graph
  definition but the same state structure as the train-mode one.
  """
  train_step: Callable[..., Any]
  eval_step: Callable[..., Any]
  predict: Callable[..., Any]


def make_program(model: nnx.Module, optimizer: nnx.Optimizer,
                 config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                 ) -> tuple[Program, dict[str, Any]]:
  """Splits model and optimizer, binds the steps to them and to `mesh`.

  Args:
    model: the model in train mode.
    optimizer: its optimizer.
    config: the run's config (loss and eval threshold).
    mesh: the device mesh; state is replicated, batches sharded on 'data'.

  Returns:
    The program and the initial state, replicated on `mesh`.
  """
  graphdef_model, model_state = nnx.split(model)
  graphdef_opt, opt_state = nnx.split(optimizer)
  model.eval()
  graphdef_eval = nnx.graphdef(model)
  model.train()
  state = jax.device_put({'model': nnx.to_pure_dict(model_state),
                          'opt': nnx.to_pure_dict(opt_state)},
                         sharding.replicated(mesh))
  platform = mesh.devices.flat[0].platform
  program = Program(
      train_step=functools.partial(
          jitted(train_step, platform, donate_argnums=(0,),
                 static_argnames=('graphdefs', 'loss_options', 'mesh')),
          graphdefs=(graphdef_model, graphdef_opt),
          loss_options=(config.loss.reduction, float(config.loss.smooth)), mesh=mesh),
      eval_step=functools.partial(
          jitted(eval_step, platform, donate_argnums=(1,),
                 static_argnames=('graphdef', 'threshold', 'pd_fa_relative', 'mesh')),
          graphdef=graphdef_eval, threshold=float(config.eval.threshold),
          pd_fa_relative=bool(config.eval.pd_fa_relative), mesh=mesh),
      predict=functools.partial(
          jitted(predict, platform, static_argnames=('graphdef', 'mesh')),
          graphdef=graphdef_eval, mesh=mesh))
  return program, state
