"""Entry point: `python -m irstd_jax.main --config=configs/ganet.py --workdir=DIR`.

Modes: `train` (default; resumes what DIR holds) and `eval` (scores
`--checkpoint` of DIR on `--config.eval.split`). Multi-host runs call
`jax.distributed.initialize` when a launcher's environment is present (see
`sharding.initialize_distributed`). The work is done in `irstd_jax.train`.

A mistake of the user's (a config typo, a missing file, a bad option) ends
with one line saying what and how to fix it; `--verbosity=1` or
IRSTD_TRACEBACK=1 shows the traceback instead.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from irstd_jax import cli
from irstd_jax import sharding
from irstd_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/ganet.py or configs/ganet.py:quick.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and pictures.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (and resume), or '
                  'evaluate a checkpoint.')
flags.DEFINE_string('checkpoint', 'best', "Eval mode: 'best', 'latest' or a step.")
flags.mark_flags_as_required(['config', 'workdir'])

def parse_flags(argv):
  """absl's flag parsing; a config that does not load fails in one line."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        sys.exit(f'Error: --config: no file {path} (run from the repository root, or '
                 'give the path of a config file such as configs/ganet.py).')
  try:
    return FLAGS(argv)
  except flags.Error as error:
    # A config file that raised: its message holds the traceback; keep the last line.
    lines = [line for line in str(error).splitlines() if line.strip()]
    message = lines[-1].strip() if 'Traceback' in str(error) else cli.one_line(error)
    if cli.wants_traceback(argv):
      raise
    sys.exit(f'Error: {message} (--helpshort lists the flags)')
  except (KeyError, AttributeError) as error:  # ml_collections: an unknown field.
    if cli.wants_traceback(argv):
      raise
    sys.exit(f'Error: a --config.* override names an unknown config field: {cli.one_line(error)}')
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, argv)


def main(argv):
  cli.start(argv)
  try:
    sharding.initialize_distributed()
    logging.info('JAX %s: process %d of %d, devices %s', jax.__version__,
                 jax.process_index(), jax.process_count(), jax.devices())
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, sys.argv)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
