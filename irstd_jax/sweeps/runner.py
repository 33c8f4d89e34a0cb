"""Runs a sweep's trials on this machine's devices, concurrently and resumably.

Work is cut into units: a row's seeds trained stacked (`train.train_seeds`,
one program), or single trials. Units are dealt to workers by index
(`--worker=I --num_workers=N`, or a Slurm array), so any launcher that starts
the same command N times splits a sweep without a scheduler of ours. On one
machine, units run in threads, each on its own slot of
`devices_per_trial` devices. Every trial writes `trial.json` in its workdir
when it ends ('done' with its metrics, or 'failed' with the error); a rerun
skips done trials, resumes interrupted ones from their checkpoints and retries
failed ones.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

from flax import nnx
import jax
import ml_collections
import numpy as np
from tqdm import auto as tqdm

from irstd_jax import checkpointing
from irstd_jax import config_lib
from irstd_jax import train
from irstd_jax.sweeps import spec

TRIAL_FILE = 'trial.json'


@dataclasses.dataclass(frozen=True)
class Unit:
  """Seeds of one row trained together (stacked), or a single trial."""
  row: spec.Row
  seeds: tuple[int, ...]


def units(sweep: spec.Sweep, stack_seeds: bool) -> list[Unit]:
  if stack_seeds:
    return [Unit(r, sweep.seeds) for r in sweep.rows]
  return [Unit(r, (s,)) for r in sweep.rows for s in sweep.seeds]


def share(all_units: list[Unit], worker: int, num_workers: int) -> list[Unit]:
  """Worker `worker`'s units: every `num_workers`-th, so shares differ by at most one."""
  if not 0 <= worker < num_workers:
    raise ValueError(f'--worker={worker} must be in [0, --num_workers={num_workers}).')
  return all_units[worker::num_workers]


def worker_from_environment() -> tuple[int, int] | None:
  """(worker, num_workers) of a Slurm job array, None outside one."""
  task = os.environ.get('SLURM_ARRAY_TASK_ID')
  if task is None:
    return None
  first = int(os.environ.get('SLURM_ARRAY_TASK_MIN', 0))
  count = int(os.environ.get('SLURM_ARRAY_TASK_COUNT', 1))
  return int(task) - first, count


def read_trial(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, TRIAL_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _write_trial(directory: str, record: dict[str, Any]) -> None:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, TRIAL_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)
  os.replace(path + '.tmp', path)  # A reader never sees half a file.


def is_done(directory: str) -> bool:
  record = read_trial(directory)
  return record is not None and record.get('status') == 'done'


def slots(devices: list[jax.Device], devices_per_trial: int) -> list[list[jax.Device]]:
  """The local devices cut into groups, one trial at a time on each."""
  if devices_per_trial < 1 or len(devices) < devices_per_trial:
    raise ValueError(f'devices_per_trial={devices_per_trial} but this process has '
                     f'{len(devices)} device(s).')
  count = len(devices) // devices_per_trial
  return [devices[i * devices_per_trial:(i + 1) * devices_per_trial] for i in range(count)]


def model_flops(config: ml_collections.ConfigDict) -> float:
  """FLOPs of one forward pass at the training size, batch 1 (XLA's cost analysis)."""
  model = train.create_model(config)
  model.eval()
  size = config_lib.training_size(config)
  image = jax.ShapeDtypeStruct((1, size, size, int(config.input.num_channels)), np.float32)
  graphdef, state = nnx.split(model)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, image).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


class _ThreadStreams(io.TextIOBase):
  """sys.stdout / sys.stderr that send each trial thread's output to its log file."""

  def __init__(self, default):
    super().__init__()
    self.default = default
    self.files: dict[int, Any] = {}

  def write(self, text):
    return self.files.get(threading.get_ident(), self.default).write(text)

  def flush(self):
    self.files.get(threading.get_ident(), self.default).flush()

  def isatty(self):
    return threading.get_ident() not in self.files and self.default.isatty()

  def fileno(self):
    return self.default.fileno()


def _run_unit(sweep: spec.Sweep, workdir: str, unit: Unit, devices: list[jax.Device],
              streams: tuple[_ThreadStreams, _ThreadStreams]) -> list[str]:
  """Trains the unit's unfinished seeds; returns one error line per failed seed."""
  row_dir = os.path.dirname(spec.trial_dir(workdir, unit.row, unit.seeds[0]))
  os.makedirs(row_dir, exist_ok=True)
  todo = [s for s in unit.seeds if not is_done(spec.trial_dir(workdir, unit.row, s))]
  # Seeds stack only when at the same step (all new, or checkpointed together).
  groups: dict[Any, list[int]] = {}
  for seed in todo:
    directory = os.path.join(spec.trial_dir(workdir, unit.row, seed), 'checkpoints')
    latest = None
    if os.path.isdir(directory):
      checkpoints = checkpointing.Checkpoints(directory)
      latest = checkpoints.latest_step()
      checkpoints.close()
    groups.setdefault(latest, []).append(seed)
  errors = []
  with open(os.path.join(row_dir, 'console.log'), 'a', encoding='utf-8') as log:
    for stream in streams:
      stream.files[threading.get_ident()] = log
    try:
      for seeds in groups.values():
        errors += _train_group(sweep, workdir, unit.row, seeds, devices, log)
    finally:
      for stream in streams:
        stream.files.pop(threading.get_ident(), None)
  return errors


def _train_group(sweep, workdir, row, seeds, devices, log) -> list[str]:
  dirs = {s: spec.trial_dir(workdir, row, s) for s in seeds}
  started = time.time()
  try:
    reports = train.train_seeds(spec.config_for(sweep, row, seeds[0]), dirs, devices=devices)
    with open(os.path.join(dirs[seeds[0]], 'config.json'), encoding='utf-8') as f:
      flops = model_flops(ml_collections.ConfigDict(json.load(f)))
  except Exception as error:  # pylint: disable=broad-except
    line = f'{type(error).__name__}: {error}'.splitlines()[0]
    log.write(traceback.format_exc())
    for seed, directory in dirs.items():
      _write_trial(directory, {'status': 'failed', 'row': row.name, 'seed': seed,
                               'error': line})
    return [f'{row.name} seeds {list(seeds)}: {line} (log: '
            f'{os.path.join(os.path.dirname(dirs[seeds[0]]), "console.log")})']
  seconds = time.time() - started
  for (seed, directory), result in zip(dirs.items(), reports):
    _write_trial(directory, {
        'status': 'done', 'row': row.name, 'seed': seed, 'stacked_with': list(seeds),
        'seconds': seconds, 'devices': [str(d) for d in devices],
        'num_params': result['num_params'], 'flops': flops,
        'final': result['final'], 'best': result['best']})
  return []


def run(sweep: spec.Sweep, workdir: str, *, worker: int = 0, num_workers: int = 1,
        stack_seeds: bool | None = None, devices: list[jax.Device] | None = None,
        show_progress: bool = True) -> list[str]:
  """Runs this worker's share of the sweep's unfinished trials.

  Args:
    sweep: the sweep.
    workdir: its directory (one sub-directory per trial).
    worker: this process's index among `num_workers`.
    num_workers: processes sharing the sweep (each takes every N-th unit).
    stack_seeds: train a row's seeds stacked; None: on GPU / TPU only (on the
      CPU, XLA runs the vmapped convolutions slower than seeds one after
      another: benchmarks/stacked_seeds.py).
    devices: the devices to use (default: this process's).
    show_progress: a bar over the trials.

  Returns:
    One line per failed trial group (empty when all succeeded).
  """
  devices = devices or jax.local_devices()
  if stack_seeds is None:
    stack_seeds = devices[0].platform != 'cpu'
  mine = share(units(sweep, stack_seeds), worker, num_workers)
  pending = [u for u in mine
             if not all(is_done(spec.trial_dir(workdir, u.row, s)) for s in u.seeds)]
  total = sum(len(u.seeds) for u in mine)
  done = total - sum(len(u.seeds) for u in pending)
  _prepare_data(sweep, pending)
  device_slots = slots(devices, sweep.devices_per_trial)
  streams = (_ThreadStreams(sys.stdout), _ThreadStreams(sys.stderr))
  saved = sys.stdout, sys.stderr
  monitor = tqdm.tqdm.monitor_interval
  tqdm.tqdm.monitor_interval = 0  # Its thread would write trial bars to the console.
  sys.stdout, sys.stderr = streams
  errors: list[str] = []
  free = list(range(len(device_slots)))
  lock = threading.Condition()
  try:
    with tqdm.tqdm(total=total, initial=done, unit='trial', file=saved[1],
                   disable=not show_progress, dynamic_ncols=True,
                   desc=f'{sweep.title} (worker {worker}/{num_workers})') as bar:

      def work(unit: Unit) -> list[str]:
        with lock:
          while not free:
            lock.wait()
          slot = free.pop(0)
        try:
          return _run_unit(sweep, workdir, unit, device_slots[slot], streams)
        finally:
          with lock:
            free.append(slot)
            lock.notify()

      pool = concurrent.futures.ThreadPoolExecutor(len(device_slots))
      futures = {pool.submit(work, u): u for u in pending}
      running = lambda: sum(f.running() for f in futures)  # pylint: disable=unnecessary-lambda-assignment
      bar.set_postfix(running=min(len(pending), len(device_slots)), failed=0)
      try:
        for future in concurrent.futures.as_completed(futures):
          unit = futures[future]
          unit_errors = future.result()
          errors += unit_errors
          for line in unit_errors:
            bar.write(f'FAILED {line}')
          bar.update(len(unit.seeds))
          bar.set_postfix(running=running(), failed=len(errors))
      finally:
        # On Ctrl-C, queued units are dropped; running ones cannot be stopped
        # from here (the command exits the process; checkpoints keep their work).
        pool.shutdown(wait=not sys.exc_info()[0], cancel_futures=True)
  finally:
    sys.stdout, sys.stderr = saved
    tqdm.tqdm.monitor_interval = monitor
  return errors


def _prepare_data(sweep: spec.Sweep, pending: list[Unit]) -> None:
  """Builds each dataset once, before threads would race to build it."""
  seen = set()
  for unit in pending:
    config = spec.config_for(sweep, unit.row, unit.seeds[0])
    key = json.dumps(config.dataset.to_dict(), sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      train.load_sources(config, config_lib.splits(config))


def status(sweep: spec.Sweep, workdir: str) -> dict[str, list[tuple[str, int]]]:
  """Trials by state: 'done', 'failed', 'started' (checkpoints, no result), 'new'."""
  out: dict[str, list[tuple[str, int]]] = {'done': [], 'failed': [], 'started': [], 'new': []}
  for r in sweep.rows:
    for s in sweep.seeds:
      directory = spec.trial_dir(workdir, r, s)
      record = read_trial(directory)
      if record is not None and record['status'] in ('done', 'failed'):
        out[record['status']].append((r.name, s))
      elif os.path.isdir(os.path.join(directory, 'checkpoints')):
        out['started'].append((r.name, s))
      else:
        out['new'].append((r.name, s))
  return out

