"""The JAX side of the benchmark: jitted train step and inference of a model.

The train step is the one a training loop runs: forward, SoftIoU loss,
backward and an Adam update, jitted once with the train state donated, so XLA
updates parameters and optimizer moments in place. Lowering and XLA
compilation are timed separately from execution, and XLA's own cost and
memory analyses of the compiled executables give the FLOP count and the
buffer sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from irstd_jax import compilation, convert, losses, models, steps

# The official loss reductions (see irstd_jax.losses.soft_iou_loss).
LOSS_REDUCTION = {'ganet': 'batch', 'unet': 'batch', 'gglnet': 'sample'}
# Input channels of the official models: GaNet reads 1, GGL-Net 3.
IN_CHANNELS = {'ganet': 1, 'unet': 1, 'gglnet': 3}


@contextlib.contextmanager
def count_compilations() -> Iterator[list[str]]:
  """Collects the name of every function XLA compiles inside the block.

  A cache hit (same function, shapes and dtypes) does not compile and is not
  counted, so `len()` of the yielded list is the number of (re)compilations,
  and `list.count('jit(update_stats)')` those of one jitted function
  (`irstd_jax.compilation.counting` with the persistent cache off).
  """
  with compilation.counting() as count:
    yield count.names


@dataclasses.dataclass
class Compiled:
  """A compiled executable with what it cost to build and what XLA says of it."""
  fn: Callable[..., Any]
  lower_s: float
  compile_s: float
  cpu_s: float  # process CPU time of lowering + compiling (robust to load)
  flops: float
  memory: dict[str, int]

  def to_json(self) -> dict:
    return {'lower_s': self.lower_s, 'compile_s': self.compile_s,
            'lower_and_compile_cpu_s': self.cpu_s, 'flops': self.flops,
            'memory': self.memory}


def compile_timed(jitted, *args) -> Compiled:
  """Lowers and compiles `jitted` for `args`, timing both stages."""
  cpu = time.process_time()
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  cpu_s = time.process_time() - cpu
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get('flops', float('nan')))
  mem = compiled.memory_analysis()
  memory = {}
  if mem is not None:
    memory = {k: int(getattr(mem, k)) for k in (
        'argument_size_in_bytes', 'output_size_in_bytes',
        'alias_size_in_bytes', 'temp_size_in_bytes')}
    # Live at once at the peak: inputs, outputs not aliased to donated inputs,
    # and XLA's temporaries (an upper bound on the step's working set).
    memory['peak_estimate_bytes'] = (
        memory['argument_size_in_bytes'] + memory['output_size_in_bytes']
        - memory['alias_size_in_bytes'] + memory['temp_size_in_bytes'])
  return Compiled(compiled, lower_s, compile_s, cpu_s, flops, memory)


def device_peak_bytes() -> int | None:
  """The backend's own peak allocation counter (GPU / TPU; None on CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return stats.get('peak_bytes_in_use')


def peak_matmul(n: int = 2048) -> Callable[[], object]:
  """One call of a jitted (n, n) @ (n, n) float32 matmul: the device's peak."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), jnp.float32)
  b = jax.random.normal(key_b, (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  return lambda: jax.block_until_ready(matmul(a, b))


def build_model(name: str, size: int, *, options: Mapping[str, Any] | None = None,
                state_dict: Mapping[str, np.ndarray] | None = None) -> nnx.Module:
  """Builds model `name` for `size` x `size` inputs, from torch weights if given."""
  options = dict(options or {})
  params = inspect.signature(models.get_class(name).__init__).parameters
  if 'img_size' in params:  # GaNet's GradFormer scale depends on it
    options.setdefault('img_size', size)
  if state_dict is not None:
    return convert.from_torch(name, state_dict, rngs=nnx.Rngs(0), **options)
  return models.build(name, rngs=nnx.Rngs(0), **options)


def example_batch(name: str, batch: int, size: int, seed: int = 0):
  """Random images in [0, 1] and sparse binary masks, NHWC float32 (numpy)."""
  rng = np.random.default_rng(seed)
  images = rng.random((batch, size, size, IN_CHANNELS.get(name, 1)), np.float32)
  masks = (rng.random((batch, size, size, 1)) > 0.995).astype(np.float32)
  return images, masks


class JaxBench:
  """Jitted train step and inference of one model, ready to be timed.

  Args:
    model: a model in train mode (it is split; do not use it afterwards).
    reduction: the SoftIoU reduction of the model's official training code.
    learning_rate: Adam's learning rate (the value only matters for realism).
    (Mixed precision is the model's own `dtype` option; see build_model.)
  """

  def __init__(self, model: nnx.Module, *, reduction: str,
               learning_rate: float = 5e-4, xla_defaults: bool = False):
    self.reduction = reduction
    # The project's per-executable XLA options (irstd_jax.steps), unless
    # timing XLA's defaults to compare.
    self.compiler_options = (None if xla_defaults
                             else steps.compiler_options(jax.default_backend()))
    self.tx = optax.adam(learning_rate)
    model.train()
    self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    self.eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    # The state travels as a flat list of arrays: nnx Variables are rebuilt
    # only when tracing, not on every call (~500 Variables cost tens of ms
    # of Python per call, which would show in single-image latency).
    self.state, self._treedef = jax.tree.flatten(
        (params, rest, self.tx.init(params)))
    self.train_compiled: Compiled | None = None
    self.infer_compiled: dict[int, Compiled] = {}

  # Pure functions, jitted below.
  def _train_step(self, leaves, images, masks):
    params, rest, opt_state = jax.tree.unflatten(self._treedef, leaves)

    def loss_fn(params, rest):
      model = nnx.merge(self.graphdef, params, rest, copy=True)
      loss = losses.soft_iou_loss(model(images), masks, reduction=self.reduction)
      return loss, nnx.state(model, nnx.Not(nnx.Param))

    (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, rest)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return loss, jax.tree.leaves((params, new_rest, opt_state))

  def _infer(self, leaves, images):
    params, rest, _ = jax.tree.unflatten(self._treedef, leaves)
    model = nnx.merge(self.eval_graphdef, params, rest)
    return jax.nn.sigmoid(model(images))

  def compile_train(self, images, masks) -> Compiled:
    jitted = jax.jit(self._train_step, donate_argnums=0,
                     compiler_options=self.compiler_options)
    self.train_compiled = compile_timed(jitted, self.state, images, masks)
    return self.train_compiled

  def compile_infer(self, images) -> Compiled:
    if images.shape[0] in self.infer_compiled:
      return self.infer_compiled[images.shape[0]]
    compiled = compile_timed(
        jax.jit(self._infer, compiler_options=self.compiler_options), self.state, images)
    self.infer_compiled[images.shape[0]] = compiled
    return compiled

  def train_call(self, images, masks) -> Callable[[], object]:
    """One train step per call, blocking; the state is carried (donated)."""
    step = self.train_compiled.fn
    images, masks = jax.device_put(images), jax.device_put(masks)

    def call():
      loss, self.state = step(self.state, images, masks)
      return jax.block_until_ready(loss)
    return call

  def infer_call(self, images) -> Callable[[], object]:
    """One forward pass per call, blocking, in eval mode."""
    fn = self.infer_compiled[images.shape[0]].fn
    images = jax.device_put(images)
    # Reads the state at call time: train steps donate (delete) the old one.
    return lambda: jax.block_until_ready(fn(self.state, images))

  def infer_output(self, images) -> np.ndarray:
    return np.asarray(self.infer_compiled[images.shape[0]].fn(self.state, images))
