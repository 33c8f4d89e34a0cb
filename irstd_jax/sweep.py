r"""Runs a sweep: `python -m irstd_jax.sweep --sweep=configs/sweeps/NAME.py --workdir=DIR`.

Every (row, seed) of the sweep file is an ordinary training run in
DIR/<row>/seed_<seed> (checkpoints, logs, summary, resume as irstd_jax.main).
On GPU / TPU a row's seeds train stacked as one program on one slot of
devices; units (rows, or single trials) run concurrently, one per slot. Rerunning the command continues where it stopped
and retries failed trials. When the trials are done (or with --report, at any
time) it writes DIR/table.md, table.csv and table.png.

Across machines: start the same command with --worker=I --num_workers=N (or
in a Slurm job array, which sets them) on a shared DIR; each takes every N-th
row; `--report` on any machine reads everyone's results.
"""

import os
import sys

from absl import app
from absl import flags

from irstd_jax import cli
from irstd_jax import sweeps

FLAGS = flags.FLAGS
flags.DEFINE_string('sweep', None, 'Sweep file, e.g. configs/sweeps/ganet_table2.py:quick.')
flags.DEFINE_string('workdir', None, 'Directory of the sweep: one sub-directory per trial.')
flags.DEFINE_integer('worker', None, 'This machine\'s index (default: Slurm array task, or 0).')
flags.DEFINE_integer('num_workers', None, 'How many machines share the sweep (default: '
                     'Slurm array size, or 1).')
flags.DEFINE_enum('stack_seeds', 'auto', ['auto', 'yes', 'no'],
                  'Train a row\'s seeds as one program (jax.vmap), or every trial alone. '
                  'auto: yes on GPU / TPU, no on CPU (where XLA runs the stacked '
                  'convolutions slower than one after another; docs/sweeps.md).')
flags.DEFINE_multi_string('set', [], 'A config field for every trial, e.g. '
                          '--set=dataset.source_dir=PATH (repeatable).')
flags.DEFINE_bool('report', False, 'Only write the table from the finished trials.')
flags.mark_flags_as_required(['sweep', 'workdir'])


def main(argv):
  cli.start(argv)
  try:
    sweep = sweeps.spec.load(FLAGS.sweep)
    if FLAGS.set:
      sweep.base = sweeps.spec.set_fields(sweep.base, sweeps.spec.parse_settings(FLAGS.set),
                                          '--set')
    failed = []
    if not FLAGS.report:
      worker, num_workers = sweeps.runner.worker_from_environment() or (0, 1)
      worker = worker if FLAGS.worker is None else FLAGS.worker
      num_workers = num_workers if FLAGS.num_workers is None else FLAGS.num_workers
      failed = sweeps.runner.run(sweep, FLAGS.workdir, worker=worker,
                                 num_workers=num_workers,
                                 stack_seeds={'auto': None, 'yes': True, 'no': False}[
                                     FLAGS.stack_seeds])
    paths = sweeps.table.write(sweep, FLAGS.workdir)
    with open(paths[0], encoding='utf-8') as f:
      print(f.read())
    print('Written: ' + ', '.join(paths))
    state = sweeps.runner.status(sweep, FLAGS.workdir)
    print(', '.join(f'{len(v)} {k}' for k, v in state.items()) + ' trials.')
    if failed:
      sys.exit(f'Error: {len(failed)} trial group(s) failed:\n  ' + '\n  '.join(failed)
               + '\nRerun the same command to retry them (finished trials are kept).')
  except KeyboardInterrupt:
    print('\nInterrupted: rerun the same command to continue (finished trials are kept, '
          'the others resume from their last checkpoint).', file=sys.stderr, flush=True)
    os._exit(130)  # Training threads cannot be joined quickly; checkpoints are atomic.
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, sys.argv, permission_hint='choose a writable --workdir')


if __name__ == '__main__':
  app.run(main)
