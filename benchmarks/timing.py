"""Framework-neutral timing: interleaved repeats and robust summaries.

Both frameworks run in one process on the same cores. On a shared machine the
load changes during a run, so figures that are compared are timed in
alternation (JAX step, torch step, torch step, JAX step, ...) rather than one
after the other: both then see the same contention, and the median of many
single-step timings discards the spikes.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Samples:
  """Wall-clock seconds per call of one timed function, and the CPU seconds.

  The process's CPU time (all its threads) per call is robust to other
  processes taking the cores: under contention wall time grows, CPU time
  much less. The comparisons use wall time; CPU time tells how much work
  each framework does.
  """
  seconds: tuple[float, ...]
  cpu_seconds: tuple[float, ...] = ()

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def spread(self) -> float:
    """Interquartile range relative to the median (noise indicator)."""
    if len(self.seconds) < 4:
      return float('nan')
    q = statistics.quantiles(self.seconds, n=4)
    return (q[2] - q[0]) / self.median

  def to_json(self) -> dict:
    out = {'median_s': self.median, 'min_s': min(self.seconds),
           'max_s': max(self.seconds), 'iqr_over_median': self.spread,
           'n': len(self.seconds)}
    if self.cpu_seconds:
      out['median_cpu_s'] = statistics.median(self.cpu_seconds)
    return out


def time_call(fn: Callable[[], object]) -> tuple[float, float]:
  """Wall and process CPU seconds of one synchronous call (fn must block)."""
  cpu = time.process_time()
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu


def interleaved(calls: Mapping[str, Callable[[], object]], *, repeats: int,
                warmup: int = 1) -> dict[str, Samples]:
  """Times each call `repeats` times, alternating between the calls.

  Args:
    calls: name -> a function running one step to completion (for JAX it must
      block until the result is ready).
    repeats: timed calls per name.
    warmup: untimed calls per name first (caches, allocator, thread pools).

  Returns:
    name -> Samples. The order of the calls is reversed every round, so no
    call always runs right after the same other one.
  """
  names = list(calls)
  for name in names:
    for _ in range(warmup):
      calls[name]()
  seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      seconds[name].append(time_call(calls[name]))
  return {name: Samples(tuple(w for w, _ in s), tuple(c for _, c in s))
          for name, s in seconds.items()}


def load_average() -> tuple[float, float, float]:
  """The 1, 5 and 15 minute load averages of the machine."""
  return os.getloadavg()


def limit_threads(num_threads: int | None) -> dict:
  """Restricts this process to `num_threads` cores, before jax / torch start.

  XLA's CPU client sizes its thread pools from the cores this process may run
  on (its scheduling affinity), so the affinity mask is how XLA's intra-op
  threads are limited; torch is limited with `torch.set_num_threads` by its
  side. Must be called before jax initialises its backend.

  Returns:
    What was set, for the report.
  """
  available = sorted(os.sched_getaffinity(0))
  if num_threads is None or num_threads >= len(available):
    return {'cores_allowed': len(available), 'affinity_changed': False}
  os.sched_setaffinity(0, set(available[:num_threads]))
  return {'cores_allowed': num_threads, 'affinity_changed': True}
