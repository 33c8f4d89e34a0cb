"""XLA compilations: JAX's persistent cache, and counting what a block compiles.

SIRST-v1's test split has 34 padded shapes, so its native evaluation compiles
34 executables; the persistent cache stores them on disk, and a second
evaluation of the split (in a new process) loads them instead of compiling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator

import jax

# Compilations faster than this are not written to the persistent cache
# (JAX's default, 1 s, leaves out some of the evaluation's shapes on a CPU).
CACHE_MIN_COMPILE_SECONDS = 0.2
_COMPILE = '/jax/core/compile/backend_compile_duration'
_HIT = '/jax/compilation_cache/cache_hits'
_MISS = '/jax/compilation_cache/cache_misses'


def default_cache_dir() -> str:
  """~/.cache/irstd_jax/jax (or under $XDG_CACHE_HOME)."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'irstd_jax', 'jax')


def use_persistent_cache(directory: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its folder.

  The commands call this first. JAX's own settings win: JAX_COMPILATION_CACHE_DIR
  picks the folder, JAX_ENABLE_COMPILATION_CACHE=false turns it off (None).
  """
  if not jax.config.jax_enable_compilation_cache:
    return None
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', directory or default_cache_dir())
  if jax.config.jax_persistent_cache_min_compile_time_secs > CACHE_MIN_COMPILE_SECONDS:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_SECONDS)
  return jax.config.jax_compilation_cache_dir


@dataclasses.dataclass
class Count:
  """What XLA did inside a `counting()` block.

  JAX reports a backend compilation also for an executable it loads from the
  persistent cache, so `compiled` is programs minus cache hits.
  """
  programs: int = 0         # Executables built or loaded.
  seconds: float = 0.0      # Spent building or loading them.
  cache_hits: int = 0       # Loaded from the persistent cache.
  cache_misses: int = 0     # Looked up there, not found (then compiled).
  names: list[str] = dataclasses.field(default_factory=list)  # e.g. 'jit(update_stats)'.

  @property
  def compiled(self) -> int:
    return self.programs - self.cache_hits

  def as_dict(self) -> dict[str, float]:
    counts = {k: v for k, v in dataclasses.asdict(self).items() if k != 'names'}
    return {**counts, 'compiled': self.compiled, 'seconds': round(self.seconds, 2)}

  def describe(self) -> str:
    return (f'{self.programs} XLA programs in {self.seconds:.1f} s: compiled '
            f'{self.compiled}, loaded {self.cache_hits} from the persistent cache')


@contextlib.contextmanager
def counting() -> Iterator[Count]:
  """Counts compilations and persistent-cache hits in the block (this process)."""
  count = Count()

  def on_duration(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE:
      count.programs += 1
      count.seconds += duration
      count.names.append(str(kwargs.get('fun_name', '?')))

  def on_event(event: str, **kwargs) -> None:
    del kwargs
    if event == _HIT:
      count.cache_hits += 1
    elif event == _MISS:
      count.cache_misses += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)
