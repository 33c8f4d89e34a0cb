r"""Train-step throughput of K seeds stacked (`jax.vmap`) against K seeds one after another.

  python -m benchmarks.stacked_seeds [--rows 'U-Net' GaNet GGL-Net] [--seeds 3] [--steps 20]

For each model of the sweeps (GaNet Table II's U-Net and GaNet rows, GGL-Net,
at their `:quick` sizes: 64x64, batch 4) it compiles the train step once
solo and once for K stacked models, times `--steps` steps of each (after one
warm-up step, blocking on the result) on the first device, and prints seed-
steps per second and the ratio. What a sweep gains is this ratio on its train
steps; evaluation runs per seed either way.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from irstd_jax import config_lib
from irstd_jax import optim
from irstd_jax import sharding
from irstd_jax import steps
from irstd_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {
    'U-Net': ('ganet.py', dict(use_gradformer=False, use_gfem=False)),
    'GaNet': ('ganet.py', {}),
    'GGL-Net': ('gglnet.py', {}),
}


def _config(row: str):
  config_file, options = ROWS[row]
  config = config_lib.load_config(os.path.join(REPO, 'configs', config_file), 'quick')
  config.model.options.update(options)
  config.model.options = {k: (64 if v == config_lib.TRAIN_SIZE else v)
                          for k, v in config.model.options.items()}
  config.input.image_size = 64
  config.input.mean, config.input.std = 0.0, 255.0
  return config


def _time(step, state, batch, num_steps):
  state, out = step(state, batch)  # Compiles.
  jax.block_until_ready(out)
  started = time.perf_counter()
  for _ in range(num_steps):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - started) / num_steps


def measure(row: str, num_seeds: int, num_steps: int) -> dict[str, float]:
  config = _config(row)
  mesh = sharding.create_mesh(jax.devices()[:1])
  lr = optim.create_learning_rate_fn(config, 16)
  channels = int(config.model.options.get('in_channels', config.input.num_channels))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, 64, 64, channels)).astype(np.float32)
  mask = (rng.random((4, 64, 64, 1)) > 0.99).astype(np.float32)
  states, step = [], None
  for seed in range(num_seeds):
    model = train.create_model(config, seed=seed)
    optimizer = optim.create_optimizer(model, config, lr)
    if step is None:
      solo_step, solo_state = steps.make_train_step(model, optimizer, config, mesh)
      step, _ = steps.make_train_step(model, optimizer, config, mesh, stacked=True)
    states.append(steps.create_state(model, optimizer, mesh))
  batch = {'image': image, 'mask': mask}
  stacked_state = steps.stack(states, mesh)  # New buffers: the solo step donates its state.
  solo = _time(solo_step, solo_state,
               {k: jax.device_put(v, sharding.batch_sharded(mesh)) for k, v in batch.items()},
               num_steps)
  stacked_batch = steps.stack_batches([batch] * num_seeds)
  stacked = _time(step, stacked_state,
                  {k: jax.device_put(v, sharding.stacked_batch_sharded(mesh))
                   for k, v in stacked_batch.items()}, num_steps)
  return {'solo_seed_steps_per_s': 1 / solo,
          'stacked_seed_steps_per_s': num_seeds / stacked,
          'gain': solo * num_seeds / stacked}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=list(ROWS))
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  print(f'{jax.devices()[0]}, {args.seeds} seeds, {args.steps} timed steps, load '
        f'{os.getloadavg()[0]:.1f}')
  print('| model | solo seed-steps/s | stacked seed-steps/s | stacked / solo |')
  print('|---|---|---|---|')
  for row in args.rows:
    r = measure(row, args.seeds, args.steps)
    print(f'| {row} | {r["solo_seed_steps_per_s"]:.2f} | {r["stacked_seed_steps_per_s"]:.2f} '
          f'| {r["gain"]:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
