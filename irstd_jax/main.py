"""Entry point: `python -m irstd_jax.main --config=configs/ganet.py --workdir=DIR`.

Modes: `train` (default; resumes what DIR holds) and `eval` (scores
`--checkpoint` of DIR on `--config.eval.split`). Multi-host runs call
`jax.distributed.initialize` when a launcher's environment is present (see
`sharding.initialize_distributed`). The work is done in `irstd_jax.train`.

A mistake of the user's (a config typo, a missing file, a bad option) ends
with one line saying what and how to fix it; `--verbosity=1` or
IRSTD_TRACEBACK=1 shows the traceback instead.
"""

import ast
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

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

# What a user's mistake raises: bad values (ValueError, also the datasets' and
# the workdir's errors), files (OSError), a diverging run (FloatingPointError),
# unknown config fields (KeyError / AttributeError from ml_collections).
USER_ERRORS = (ValueError, OSError, FloatingPointError, KeyError, AttributeError)
TRACEBACK_ENV = 'IRSTD_TRACEBACK'


def one_line(error: BaseException) -> str:
  """The error's message on one line, without the quoting of KeyError reprs."""
  text = str(error.args[0]) if len(error.args) == 1 else str(error)
  for _ in range(2):  # KeyError inside AttributeError quotes twice.
    if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':
      try:
        text = str(ast.literal_eval(text))
      except (ValueError, SyntaxError):
        break
  if isinstance(error, OSError) and error.filename:
    text = f'{error.strerror or text}: {error.filename}'
    if isinstance(error, PermissionError):
      text += ' (choose a writable --workdir or --config.dataset.data_dir)'
  return ' '.join(text.split())


def _wants_traceback(argv) -> bool:
  verbose = any(a.startswith('--verbosity=') and a.split('=', 1)[1] not in ('0', '-1')
                or a.startswith('-v=') for a in argv)
  return verbose or os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def fail(error: BaseException, argv) -> None:
  """Re-raises `error` for a traceback, or exits with its one-line message."""
  if _wants_traceback(argv) or not isinstance(error, USER_ERRORS):
    raise error
  sys.exit(f'Error: {one_line(error)}\n(For the traceback: --verbosity=1 or '
           f'{TRACEBACK_ENV}=1.)')


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
    message = lines[-1].strip() if 'Traceback' in str(error) else one_line(error)
    if _wants_traceback(argv):
      raise
    sys.exit(f'Error: {message}\nPass --helpshort to see the flags.')
  except (KeyError, AttributeError) as error:  # ml_collections: an unknown field.
    if _wants_traceback(argv):
      raise
    sys.exit(f'Error: a --config.* override names an unknown config field: {one_line(error)}')
  except Exception as error:  # pylint: disable=broad-except
    fail(error, argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    # The console shows the progress bar and per-epoch lines; libraries' INFO
    # logs (orbax saves, TFDS) would drown them. --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  try:
    sharding.initialize_distributed()
    logging.info('JAX %s: process %d of %d, devices %s', jax.__version__,
                 jax.process_index(), jax.process_count(), jax.devices())
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  except Exception as error:  # pylint: disable=broad-except
    fail(error, sys.argv)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
