"""What a sweep is: a base config, named rows of field values, seeds.

A sweep file (configs/sweeps/*.py) is plain Python like a config file: its
`get_sweep(arg)` returns a `Sweep`. Rows are built with `row`, `product` and
`zip_rows`; each row's fields are dotted config paths
('model.options.use_gfem'). Every (row, seed) is one trial: an ordinary
training run of the base config with the row's fields and `seed` set.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from typing import Any, Iterable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Row:
  name: str                      # As the paper names it ('U-Net + GFEM').
  fields: dict[str, Any]         # Dotted config path -> value.


@dataclasses.dataclass
class Sweep:
  """A table of training runs.

  Attributes:
    title: the table's title (the paper's table).
    base: the config every trial starts from.
    rows: the table's rows, in the paper's order.
    seeds: every row is trained once per seed.
    paper: row name -> {metric: value} the paper reports (percent for mIoU,
      nIoU, Pd, F1; x1e-6 for Fa), shown beside ours.
    paper_note: where the paper's numbers come from (dataset, protocol).
    devices_per_trial: devices one trial (or one row's stacked seeds) uses.
  """
  title: str
  base: ml_collections.ConfigDict
  rows: list[Row]
  seeds: tuple[int, ...] = (0, 1, 2)
  paper: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  paper_note: str = ''
  devices_per_trial: int = 1

  def __post_init__(self):
    names = [r.name for r in self.rows]
    if len(set(names)) != len(names):
      raise ValueError(f'Row names must be unique: {names}.')
    if len({slug(n) for n in names}) != len(names):
      raise ValueError(f'Row names must differ in letters or digits: {names}.')
    unknown = set(self.paper) - set(names)
    if unknown:
      raise ValueError(f'paper names rows that do not exist: {sorted(unknown)}.')
    self.seeds = tuple(int(s) for s in self.seeds)
    for r in self.rows:  # Fails early on a misspelt field.
      config_for(self, r, self.seeds[0])


def row(name: str, **fields: Any) -> Row:
  """One named row; `fields` use '__' for dots (model__options__use_gfem=False)."""
  return Row(name, {k.replace('__', '.'): v for k, v in fields.items()})


def product(name: str, **values: Iterable[Any]) -> list[Row]:
  """Every combination of the fields' values; `name` is formatted with them.

  product('r={model__options__ca_ratio}', model__options__ca_ratio=(1, 2, 4))
  """
  keys = list(values)
  return [row(name.format(**dict(zip(keys, combo))), **dict(zip(keys, combo)))
          for combo in itertools.product(*(values[k] for k in keys))]


def zip_rows(names: Iterable[str], **values: Iterable[Any]) -> list[Row]:
  """Row i takes the i-th value of every field."""
  names = list(names)
  columns = {k: list(v) for k, v in values.items()}
  for k, v in columns.items():
    if len(v) != len(names):
      raise ValueError(f'{k} has {len(v)} values for {len(names)} row names.')
  return [row(n, **{k: v[i] for k, v in columns.items()}) for i, n in enumerate(names)]


def config_for(sweep: Sweep, r: Row, seed: int) -> ml_collections.ConfigDict:
  """The trial's config: the sweep's base with the row's fields and the seed."""
  config = set_fields(sweep.base, r.fields, f'Row {r.name!r}')
  config.seed = int(seed)
  return config


def set_fields(config: ml_collections.ConfigDict, fields: dict[str, Any],
               what: str) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields set; `what` names them in errors."""
  config = copy.deepcopy(config)
  for path, value in fields.items():
    parent, _, key = path.rpartition('.')
    node = config
    for part in parent.split('.') if parent else ():
      if part not in node:
        raise ValueError(f'{what}: config has no field {path!r} (no {part!r}).')
      node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
      # Options are keyword arguments (of the model, the dataset): new keys are fine.
      if key not in node and not parent.endswith('options'):
        raise ValueError(f'{what}: config has no field {path!r}.')
      with node.ignore_type():
        node[key] = value
    elif isinstance(node, dict):  # Model options are a plain dict of keyword arguments.
      node[key] = value
    else:
      raise ValueError(f'{what}: {parent!r} in {path!r} is not a config group.')
  return config


def parse_settings(settings: Iterable[str]) -> dict[str, Any]:
  """['dataset.source_dir=PATH', 'input.batch_size=8'] -> {path: value}."""
  import ast  # pylint: disable=g-import-not-at-top
  out = {}
  for item in settings:
    path, equals, text = item.partition('=')
    if not equals or not path.strip():
      raise ValueError(f'--set={item}: expected FIELD=VALUE, e.g. --set=dataset.source_dir=PATH.')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    out[path.strip()] = value
  return out


def slug(name: str) -> str:
  """A folder name for a row ('U-Net + GFEM' -> 'u_net_gfem')."""
  return re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_') or 'row'


def trial_dir(workdir: str, r: Row, seed: int) -> str:
  return os.path.join(workdir, slug(r.name), f'seed_{seed}')


def load(path_and_arg: str) -> Sweep:
  """`configs/sweeps/NAME.py[:arg]` -> its Sweep."""
  path, _, arg = path_and_arg.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'--sweep: no file {path} (run from the repository root, or give the path of '
        'a sweep file such as configs/sweeps/ganet_table2.py).')
  import importlib.util  # pylint: disable=g-import-not-at-top
  name = 'irstd_sweep_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} has no get_sweep(arg): is it a config, not a sweep file?')
  return module.get_sweep(arg or None)



def standard(arg: str | None, *, config_file: str, title: str, rows: list[Row],
             dataset: str = '', fields: dict[str, Any] | None = None,
             paper: dict[str, dict[str, float]] | None = None, paper_note: str = '',
             seeds: int = 3, variant: str = '') -> Sweep:
  """A sweep of `rows` over a config file, with the arguments every sweep file takes.

  Arguments (after ':' in --sweep, comma-separated): `quick` (the config's
  :quick variant: offline synthetic data, minutes on a CPU), `seeds=N` (seeds
  0..N-1), `rows=N` (the first N rows), `epochs=N`.

  Args:
    arg: the text after ':'.
    config_file: the config every row starts from.
    title: the paper's table.
    rows: the table's rows.
    dataset: the paper's dataset (not with quick).
    fields: dotted config fields set for the paper's protocol (not with quick).
    paper: the paper's numbers by row.
    paper_note: where they come from.
    seeds: the default number of seeds.
    variant: the config's own argument every trial starts from (e.g. 'cpu').
  """
  from irstd_jax import config_lib  # pylint: disable=g-import-not-at-top
  a = config_lib.parse_arg(arg, quick=False, seeds=seeds, rows=0, epochs=0)
  parts = [variant, 'quick' if a.quick else (f'dataset={dataset}' if dataset else '')]
  parts.append(f'epochs={a.epochs}' if a.epochs else '')
  base = config_lib.load_config(config_file, ','.join(p for p in parts if p) or None)
  if not a.quick:
    base = set_fields(base, dict(fields or {}), 'The paper\'s protocol')
  rows = rows[:a.rows] if a.rows else rows
  kept = {r.name for r in rows}
  return Sweep(title + (' — :quick, offline synthetic data' if a.quick else ''), base, rows,
               tuple(range(a.seeds)),
               paper={k: v for k, v in (paper or {}).items() if k in kept},
               paper_note=paper_note)
