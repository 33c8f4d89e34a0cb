r"""Trains a model in JAX and in the official PyTorch code side by side, step by step.

  python -m benchmarks.trajectory --model=ganet --official=PATH/TO/Gradient-Transformer \
      [--steps 32] [--batch 4] [--size 128] [--seed 0] [--eval-images 4] \
      [--jax-precision default highest] [--threads 2] [--out trajectory.json]

Both implementations start from the same weights (the official module's
initialisation, converted with `irstd_jax.convert`) and see the same batches:
random crops of SIRST-v1 training images (the idx_427 trainval split), each
placed around a target pixel, drawn with a fixed seed. Each uses its paper's
optimizer, learning rate and loss (`configs/<model>.py`: GaNet Adam 5e-4 and
SoftIoU summed over the batch, one grey channel; GGL-Net Adam 1e-4 and SoftIoU
averaged per image, three channels; both /255). The JAX side runs the project's
own train step (`irstd_jax.steps`) and optimizer (`irstd_jax.optim`); the
official side runs the official training loop's order (train mode, forward,
loss on the sigmoid output, zero_grad, backward, Adam step; no clipping, no
weight decay).

A float32 difference means little without the reference's own spread, so the
official model also runs from the same start on the same batches
* in float64 (`module.double()`), the closest thing to exact arithmetic, and
* in float32 with every input pixel moved by +-1e-6: near-ties (max pooling,
  thresholds) make single gradients jump in the official code itself, and the
  loss of a chaotic trajectory drifts by as much as that spread.
Reported: per-step losses and their differences, the worst per-tensor relative
difference of the first step's gradients and of the weights after the last
step, and the eval-mode outputs on crops of test images after the last step
(max abs difference of the probabilities, fraction of pixels whose 0.5
decision differs). Nothing of the official code is in this repository: the
model class is imported from the checkout given by --official
(`benchmarks.torch_reference`).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'datasets' / 'sirst_v1'
CONFIGS = {'ganet': REPO_ROOT / 'configs' / 'ganet.py',
           'gglnet': REPO_ROOT / 'configs' / 'gglnet.py'}
PERTURBATION = 1e-6
# Where tests/test_trajectory.py finds an official checkout.
OFFICIAL_ENV = {'ganet': 'IRSTD_GANET_OFFICIAL', 'gglnet': 'IRSTD_GGLNET_OFFICIAL'}

# Runs of the official model: name -> (dtype, input perturbation).
TORCH_RUNS = {'torch64': ('float64', 0.0), 'torch32': ('float32', 0.0),
              'torch32_moved': ('float32', PERTURBATION)}


# -- Data (numpy only) ----------------------------------------------------------


def load_split(root: str | os.PathLike, split: str
               ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
  """(H, W) uint8 images, {0, 1} uint8 masks and names of a SIRST-v1 split.

  Reads the raw dataset folder (images/, masks/NAME_pixels0.png,
  splits/idx_427/SPLIT.txt or idx_427/SPLIT.txt) with the project's reader,
  so that both sides see what training sees; a mask whose size differs from
  its image (SIRST's Misc_111) is resized to it (nearest).
  """
  from irstd_jax.datasets import base, imageio  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  lists = [root / 'splits' / 'idx_427' / f'{split}.txt', root / 'idx_427' / f'{split}.txt']
  list_path = next((p for p in lists if p.is_file()), None)
  if list_path is None:
    raise ValueError(f'{root}: no split list {lists[0]} or {lists[1]}; pass --data '
                     'the root of a SIRST-v1 copy (datasets/README.md).')
  items = base.resolve_splits(root / 'images', root / 'masks', {split: str(list_path)},
                              lambda name: (f'{name}_pixels0', name))[split]
  images, masks = [], []
  for item in items:
    image = imageio.read_image(item.image)
    mask = imageio.read_mask(item.mask)
    if mask.shape != image.shape:
      mask = imageio.resize_nearest(mask, image.shape)
    images.append(image)
    masks.append((mask > 0).astype(np.uint8))
  return images, masks, [item.id for item in items]


def crop_around_target(image: np.ndarray, mask: np.ndarray, size: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A size x size crop holding a random target pixel at a random place.

  Images smaller than `size` are zero-padded at the bottom and right first;
  an image without target gives a uniformly random crop.
  """
  pad = ((0, max(0, size - image.shape[0])), (0, max(0, size - image.shape[1])))
  image, mask = np.pad(image, pad), np.pad(mask, pad)
  h, w = image.shape
  ys, xs = np.nonzero(mask)
  if len(ys):
    k = rng.integers(len(ys))
    top = rng.integers(max(0, ys[k] - size + 1), min(ys[k], h - size) + 1)
    left = rng.integers(max(0, xs[k] - size + 1), min(xs[k], w - size) + 1)
  else:
    top, left = rng.integers(h - size + 1), rng.integers(w - size + 1)
  return (image[top:top + size, left:left + size],
          mask[top:top + size, left:left + size])


def to_inputs(crops: Sequence[np.ndarray], channels: int) -> np.ndarray:
  """uint8 crops -> (B, S, S, channels) float32 in [0, 1] (both papers' /255)."""
  x = np.stack(crops).astype(np.float32)[..., None] / np.float32(255)
  return np.repeat(x, channels, axis=-1)


def sample_batches(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                   steps: int, batch: int, size: int, channels: int, seed: int
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
  """`steps` batches (images (B, S, S, C) float32, masks (B, S, S, 1) float32).

  Image indices follow per-epoch permutations of the split, so no image comes
  twice before every image came once; a pure function of its arguments.
  """
  rng = np.random.default_rng(seed)
  order: list[int] = []
  while len(order) < steps * batch:
    order.extend(rng.permutation(len(images)).tolist())
  batches = []
  for s in range(steps):
    crops = [crop_around_target(images[i], masks[i], size, rng)
             for i in order[s * batch:(s + 1) * batch]]
    x = to_inputs([c[0] for c in crops], channels)
    y = np.stack([c[1] for c in crops]).astype(np.float32)[..., None]
    batches.append((x, y))
  return batches


def eval_crops(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
               count: int, size: int, channels: int, seed: int) -> np.ndarray:
  """`count` crops of the first images holding a target, as model inputs."""
  rng = np.random.default_rng(seed)
  chosen = [i for i, m in enumerate(masks) if m.any()][:count]
  return to_inputs([crop_around_target(images[i], masks[i], size, rng)[0]
                    for i in chosen], channels)


def noise_like(x: np.ndarray, seed: int) -> np.ndarray:
  """Uniform grey noise in [0, 1) of `x`'s shape (channels repeated).

  Real crops have flat regions (saturated sky, zero padding) where features
  are equal in exact arithmetic, so max pooling meets exact ties that two
  implementations may break differently; noise has none.
  """
  grey = np.random.default_rng(seed).random(x.shape[:3] + (1,), np.float32)
  return np.repeat(grey, x.shape[-1], axis=-1)


def move(x: np.ndarray, amount: float, seed: int) -> np.ndarray:
  """`x` with every element moved by +amount or -amount (random signs)."""
  if not amount:
    return x
  signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=x.shape)
  return (x.astype(np.float64) + amount * signs).astype(x.dtype)


# -- Comparison (numpy only) ------------------------------------------------------


def relative_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                         origin: dict[str, np.ndarray] | None = None) -> dict[str, float]:
  """Per common name: ||a - b|| / ||b - origin|| (float64; origin 0 if None).

  With `origin` the initial weights, the difference is relative to what
  training changed (weights initialised to zero or one, such as batch-norm
  biases and scales, would otherwise look exact or hopeless). 0 where a
  equals b, inf where only the denominator is zero.
  """
  out = {}
  for name in sorted(set(a) & set(b) & (set(origin) if origin is not None else set(b))):
    x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
    base = y - np.asarray(origin[name], np.float64) if origin is not None else y
    norm, diff = np.linalg.norm(base), np.linalg.norm(x - y)
    out[name] = float(diff / norm) if norm else (0.0 if diff == 0 else float('inf'))
  return out


def overall_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                       origin: dict[str, np.ndarray] | None = None) -> float:
  """`relative_differences` of all common tensors taken as one vector."""
  names = sorted(set(a) & set(b) & (set(origin) if origin is not None else set(b)))
  diff = sum(float(np.sum((np.asarray(a[n], np.float64) - np.asarray(b[n], np.float64)) ** 2))
             for n in names)
  base = sum(float(np.sum((np.asarray(b[n], np.float64)
                           - (np.asarray(origin[n], np.float64) if origin is not None else 0))
                          ** 2)) for n in names)
  return float(np.sqrt(diff / base)) if base else (0.0 if diff == 0 else float('inf'))


def compare_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                    origin: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """All tensors as one vector, the median tensor and the worst tensor.

  The worst tensor is often one whose exact gradient is zero (a convolution
  bias that a batch norm subtracts again): its float32 gradient is rounding
  noise, which Adam scales to full-size steps, so its relative difference is
  large even between the reference's own float32 and float64 runs.
  """
  per_tensor = relative_differences(a, b, origin)
  if not per_tensor:
    return {'overall': float('nan'), 'median': float('nan'), 'max': float('nan'),
            'tensor': None}
  name = max(per_tensor, key=per_tensor.get)
  return {'overall': overall_difference(a, b, origin),
          'median': float(np.median(list(per_tensor.values()))),
          'max': per_tensor[name], 'tensor': name}


def output_difference(a: np.ndarray, b: np.ndarray, threshold: float = 0.5
                      ) -> dict[str, float]:
  """Max abs difference of two probability maps and the share of flipped decisions."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return {'max_abs': float(np.max(np.abs(a - b))),
          'decision_flips': float(np.mean((a > threshold) != (b > threshold)))}


# Pairs compared, as (run, reference); the reference's own spread comes first.
PAIRS = (('torch32', 'torch64'), ('torch32_moved', 'torch32'))


def jax_pairs(jax_runs: Sequence[str]) -> tuple[tuple[str, str], ...]:
  return tuple(p for name in jax_runs for p in ((name, 'torch32'), (name, 'torch64')))


def summarize(runs: dict[str, dict[str, Any]], initial: dict[str, np.ndarray]
              ) -> dict[str, Any]:
  """Differences between runs: per-step losses, first-step gradients, final
  weights and eval outputs, for the reference's spread and for each JAX run.

  Args:
    runs: name -> {'losses': [...], 'grads': {torch name: array},
      'params': {torch name: array}, 'eval': probabilities}; names 'torch32',
      'torch64', 'torch32_moved' and one or more 'jax_*'.
    initial: the common starting weights (torch names); final weights are
      compared relative to how far training moved them.
  """
  names = [n for n in runs if n.startswith('jax')]
  pairs = PAIRS + jax_pairs(names)
  summary: dict[str, Any] = {'pairs': [f'{a} vs {b}' for a, b in pairs]}
  for a, b in pairs:
    key = f'{a} vs {b}'
    steps = np.abs(np.asarray(runs[a]['losses'], np.float64)
                   - np.asarray(runs[b]['losses'], np.float64))
    summary[key] = {
        'loss_abs_diff': steps.tolist(),
        'loss_abs_diff_max': float(steps.max()),
        'loss_abs_diff_first': float(steps[0]),
        'grads_step1': compare_tensors(runs[a]['grads'], runs[b]['grads']),
        'params_final': compare_tensors(runs[a]['params'], runs[b]['params'], initial),
        'eval': output_difference(runs[a]['eval'], runs[b]['eval']),
    }
  return summary


def _g(value: float) -> str:
  return f'{value:.2e}'


def markdown(result: dict[str, Any]) -> str:
  """The per-step table and the summary table of `result` (see `run`)."""
  runs, summary = result['runs'], result['summary']
  jax_names = [n for n in runs if n.startswith('jax')]
  setup = result['setup']
  lines = [f"### {setup['model']}: {setup['steps']} steps, batch {setup['batch']}, "
           f"{setup['size']}x{setup['size']} crops, seed {setup['seed']}"
           + (' (noise images)' if setup.get('noise_images') else ''), '']
  head = ['step', 'loss torch64', 'loss torch32'] + [f'loss {n}' for n in jax_names]
  head += ['\\|t32−t64\\|', '\\|t32(x±1e-6)−t32\\|']
  for n in jax_names:
    head += [f'\\|{n}−t32\\|', f'\\|{n}−t64\\|']
  lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for s in range(len(runs['torch32']['losses'])):
    row = [str(s + 1), f"{runs['torch64']['losses'][s]:.6f}",
           f"{runs['torch32']['losses'][s]:.6f}"]
    row += [f"{runs[n]['losses'][s]:.6f}" for n in jax_names]
    row += [_g(summary[f'{a} vs {b}']['loss_abs_diff'][s])
            for a, b in PAIRS + jax_pairs(jax_names)]
    lines.append('| ' + ' | '.join(row) + ' |')
  lines += ['', '| pair | max \\|Δloss\\| over steps | step-1 grads: rel. diff, all / '
            'median tensor / worst tensor | final weights: diff. rel. to the update, all / '
            'median / worst | eval: max \\|Δp\\| | eval: flipped decisions |',
            '|---|---|---|---|---|---|']
  for key in summary['pairs']:
    s = summary[key]
    g, p, e = s['grads_step1'], s['params_final'], s['eval']
    lines.append(
        f"| {key} | {_g(s['loss_abs_diff_max'])} | {_g(g['overall'])} / {_g(g['median'])} / "
        f"{_g(g['max'])} (`{g['tensor']}`) | {_g(p['overall'])} / {_g(p['median'])} / "
        f"{_g(p['max'])} (`{p['tensor']}`) | {_g(e['max_abs'])} | {e['decision_flips']:.2e} |")
  return '\n'.join(lines) + '\n'


# -- The two implementations --------------------------------------------------------


def paper_config(name: str, size: int):
  """The paper's config (`configs/<name>.py`) with the model sized for `size` crops."""
  from irstd_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(str(CONFIGS[name]))
  with config.unlocked():
    config.model.options = {k: size if v == config_lib.TRAIN_SIZE else v
                            for k, v in config.model.options.items()}
  return config


def run_jax(name: str, state_dict: dict[str, np.ndarray], config,
            batches: Sequence[tuple[np.ndarray, np.ndarray]], eval_x: np.ndarray,
            precision: str) -> dict[str, Any]:
  """The project's train step from `state_dict`; losses, step-1 grads, weights, eval."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from irstd_jax import convert, optim, sharding, steps  # pylint: disable=g-import-not-at-top

  with jax.default_matmul_precision(None if precision == 'default' else precision):
    model = convert.from_torch(name, state_dict, rngs=nnx.Rngs(0),
                               **dict(config.model.options))
    model.train()
    mesh = sharding.create_mesh(jax.devices()[:1])
    # No decay inside a short run (the papers' first drop is at epoch 200).
    optimizer = optim.create_optimizer(
        model, config, optim.create_learning_rate_fn(config, steps_per_epoch=len(batches)))
    reduction, smooth = config.loss.reduction, float(config.loss.smooth)

    @nnx.jit
    def grads_fn(model, batch):
      return nnx.grad(steps.loss_fn)(model, batch, reduction, smooth)
    first = {'image': batches[0][0], 'mask': batches[0][1]}
    # On a clone: a train-mode forward pass updates the batch-norm statistics.
    shadow = nnx.clone(model)
    grads = grads_fn(shadow, first)
    nnx.update(shadow, grads)  # the gradients under the torch names
    torch_grads = {k: v for k, v in convert.to_torch(shadow).items()
                   if not k.endswith(('running_mean', 'running_var'))}

    step, state = steps.make_train_step(model, optimizer, config, mesh)
    batch_sharding = sharding.batch_sharded(mesh)
    losses = []
    for x, y in batches:
      batch = jax.device_put({'image': x, 'mask': y}, batch_sharding)
      state, outputs = step(state, batch)
      losses.append(float(outputs['loss']))
    model_state = nnx.state(model)
    nnx.replace_by_pure_dict(model_state, jax.device_get(state['model']))
    nnx.update(model, model_state)
    model.eval()
    probs = nnx.jit(lambda m, x: jax.nn.sigmoid(m(x)))(model, eval_x)
  return {'losses': losses, 'grads': torch_grads, 'params': convert.to_torch(model),
          'eval': np.asarray(probs)}


def _official_loss(torch, probs, targets, reduction: str):
  """SoftIoU on the official models' sigmoid output, as each official script."""
  smooth = 1.0
  if reduction == 'batch':  # Gradient-Transformer loss.py
    inter = (probs * targets).sum()
    union = probs.sum() + targets.sum() - inter
  else:  # MSDA-Net loss/softloss.py
    inter = (probs * targets).sum(dim=(1, 2, 3))
    union = probs.sum(dim=(1, 2, 3)) + targets.sum(dim=(1, 2, 3)) - inter
  return 1.0 - torch.mean((inter + smooth) / (union + smooth))


def _float64(torch, module):
  """`module.double()`, plus the plain tensor attributes it leaves alone.

  The official GaNet keeps its fixed difference kernels (0 / +-1 entries,
  exact in any precision) as bare tensor attributes, not buffers.
  """
  module = module.double()
  for sub in module.modules():
    for key, value in vars(sub).items():
      if isinstance(value, torch.Tensor) and value.is_floating_point():
        setattr(sub, key, value.double())
  return module


def run_torch(initial, config, batches: Sequence[tuple[np.ndarray, np.ndarray]],
              eval_x: np.ndarray, *, dtype: str, moved: float, seed: int
              ) -> dict[str, Any]:
  """The official loop from a copy of `initial`; losses, step-1 grads, weights, eval."""
  import torch  # pylint: disable=g-import-not-at-top
  module = copy.deepcopy(initial)
  if dtype == 'float64':
    module = _float64(torch, module)
  tdtype = getattr(torch, dtype)

  def tensor(a, moved_seed=None):
    # NHWC numpy -> NCHW tensor, a fresh copy: with one channel the transposed
    # view would keep channels-last strides, which the official `.view` calls
    # reject (benchmarks.torch_reference).
    if moved_seed is not None:
      a = move(a, moved, seed=moved_seed)
    return torch.from_numpy(np.transpose(a, (0, 3, 1, 2)).copy()).to(tdtype)

  opt = config.optimizer
  # torch.optim.Adam(net.parameters(), lr=...) in both official scripts.
  optimizer = torch.optim.Adam(module.parameters(), lr=float(opt.learning_rate),
                               betas=(float(opt.b1), float(opt.b2)), eps=float(opt.eps))
  names = {id(p): n for n, p in module.named_parameters()}
  losses, grads = [], {}
  for s, (x, y) in enumerate(batches):
    module.train()
    # Only the images move; the masks stay exact.
    loss = _official_loss(torch, module(tensor(x, seed + s)), tensor(y),
                          config.loss.reduction)
    optimizer.zero_grad()
    loss.backward()
    if s == 0:
      grads = {names[id(p)]: p.grad.detach().double().numpy().copy()
               for p in module.parameters() if p.grad is not None}
    optimizer.step()
    losses.append(loss.item())
  module.eval()
  with torch.no_grad():
    probs = module(tensor(eval_x, seed + len(batches))).double().numpy()
  params = {k: v.detach().double().numpy() for k, v in module.state_dict().items()
            if not k.endswith('num_batches_tracked')}
  return {'losses': losses, 'grads': grads, 'params': params,
          'eval': np.transpose(probs, (0, 2, 3, 1))}


def run(name: str, official: str | os.PathLike, *, steps: int = 32, batch: int = 4,
        size: int = 128, seed: int = 0, eval_images: int = 4,
        data: str | os.PathLike = DEFAULT_DATA,
        jax_precisions: Sequence[str] = ('default',), noise: bool = False,
        log=print) -> dict[str, Any]:
  """Both implementations from the same weights on the same batches.

  `noise` replaces the training crops' pixels by `noise_like` (masks kept):
  a control without exact ties.

  Returns:
    {'setup': ..., 'runs': name -> losses / eval (grads and weights dropped),
     'summary': `summarize` of all runs, 'seconds': per run}.
  """
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  config = paper_config(name, size)
  channels = int(config.input.num_channels)
  train_images, train_masks, _ = load_split(data, 'trainval')
  test_images, test_masks, _ = load_split(data, 'test')
  batches = sample_batches(train_images, train_masks, steps=steps, batch=batch,
                           size=size, channels=channels, seed=seed)
  if noise:
    batches = [(noise_like(x, seed + 1 + s), y) for s, (x, y) in enumerate(batches)]
  eval_x = eval_crops(test_images, test_masks, count=eval_images, size=size,
                      channels=channels, seed=seed)
  initial = torch_reference.build_official(name, pathlib.Path(official).expanduser().resolve(),
                                           size)
  state_dict = torch_reference.state_dict_numpy(initial)
  runs, seconds = {}, {}
  for run_name, (dtype, moved) in TORCH_RUNS.items():
    start = time.perf_counter()
    runs[run_name] = run_torch(initial, config, batches, eval_x, dtype=dtype,
                               moved=moved, seed=seed)
    seconds[run_name] = time.perf_counter() - start
    log(f'{name} {run_name}: {seconds[run_name]:.0f} s, last loss '
        f'{runs[run_name]["losses"][-1]:.6f}')
  for precision in jax_precisions:
    run_name = f'jax_{precision}'
    start = time.perf_counter()
    runs[run_name] = run_jax(name, state_dict, config, batches, eval_x, precision)
    seconds[run_name] = time.perf_counter() - start
    log(f'{name} {run_name}: {seconds[run_name]:.0f} s (with compilation), last loss '
        f'{runs[run_name]["losses"][-1]:.6f}')
  setup = {'model': name, 'steps': steps, 'batch': batch, 'size': size, 'seed': seed,
           'eval_images': int(eval_x.shape[0]), 'channels': channels,
           'learning_rate': float(config.optimizer.learning_rate),
           'reduction': config.loss.reduction, 'perturbation': PERTURBATION,
           'noise_images': noise,
           'model_options': dict(config.model.options), 'official': str(official)}
  return {'setup': setup, 'summary': summarize(runs, state_dict), 'seconds': seconds,
          'runs': {k: {'losses': v['losses']} for k, v in runs.items()}}


def _environment() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  return {'date': datetime.date.today().isoformat(), 'python': platform.python_version(),
          'jax': jax.__version__, 'torch': torch.__version__,
          'device': str(jax.devices()[0]), 'processor': platform.processor(),
          'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
          'command': ' '.join(['python -m benchmarks.trajectory'] + sys.argv[1:])}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog='python -m benchmarks.trajectory', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', required=True, choices=sorted(CONFIGS))
  p.add_argument('--official', required=True, metavar='DIR',
                 help='root of the official checkout (greekinRoma/Gradient-Transformer '
                 'for GaNet, YuChuang1205/MSDA-Net for GGL-Net).')
  p.add_argument('--data', default=str(DEFAULT_DATA), help='SIRST-v1 folder.')
  p.add_argument('--steps', type=int, default=32)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--size', type=int, default=128, help='crop side (a multiple of 32).')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--eval-images', type=int, default=4)
  p.add_argument('--jax-precision', nargs='+', default=['default'],
                 choices=['default', 'high', 'highest'],
                 help="jax_default_matmul_precision of the JAX runs (one run each).")
  p.add_argument('--noise-images', action='store_true',
                 help="uniform noise instead of the training crops' pixels (masks "
                 'kept): a control without the exact ties of flat image regions.')
  p.add_argument('--threads', type=int, default=0,
                 help='torch.set_num_threads (0: leave torch its default).')
  p.add_argument('--out', help='JSON results file (a .md table is written next to it).')
  args = p.parse_args(argv)
  if args.size % 32:
    p.error(f'--size {args.size}: use a multiple of 32 (both models downsample 5 times).')
  if args.steps < 1 or args.batch < 1 or args.eval_images < 1:
    p.error('--steps, --batch and --eval-images must be positive.')
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch = torch_reference.import_torch()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch_reference.check_checkout(args.model, pathlib.Path(args.official).expanduser(),
                                 args.official)
  result = run(args.model, args.official, steps=args.steps, batch=args.batch,
               size=args.size, seed=args.seed, eval_images=args.eval_images,
               data=args.data, jax_precisions=args.jax_precision, noise=args.noise_images,
               log=lambda text: print(text, file=sys.stderr, flush=True))
  result['environment'] = _environment()
  table = markdown(result)
  print(table)
  if args.out:
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix('.md').write_text(table)


if __name__ == '__main__':
  main()
