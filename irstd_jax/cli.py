"""Command-line helpers: a user's mistake ends in one line, not a traceback.

Every command of the toolbox (`irstd_jax.main`, `irstd_jax.datasets.build`,
...) reports the errors a user can fix (a bad value, a missing file, a config
typo) as one line saying what and how to fix it, and exits non-zero;
`--verbosity=1` or IRSTD_TRACEBACK=1 shows the traceback instead.
"""

import ast
import os
import sys

# What a user's mistake raises: bad values (ValueError, also the datasets' and
# the workdir's errors), files (OSError), a diverging run (FloatingPointError),
# unknown config fields (KeyError / AttributeError from ml_collections).
USER_ERRORS = (ValueError, OSError, FloatingPointError, KeyError, AttributeError)
TRACEBACK_ENV = 'IRSTD_TRACEBACK'
MAIN_PERMISSION_HINT = 'choose a writable --workdir or --config.dataset.data_dir'


def one_line(error: BaseException, permission_hint: str = MAIN_PERMISSION_HINT) -> str:
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
      text += f' ({permission_hint})'
  return ' '.join(text.split())


def wants_traceback(argv) -> bool:
  """--verbosity=1 (or more), -v=1, or IRSTD_TRACEBACK set to anything but 0."""
  verbose = any(a.startswith('--verbosity=') and a.split('=', 1)[1] not in ('0', '-1')
                or a.startswith('-v=') for a in argv)
  return verbose or os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def fail(error: BaseException, argv, permission_hint: str = MAIN_PERMISSION_HINT) -> None:
  """Re-raises `error` for a traceback, or exits with its one-line message."""
  if wants_traceback(argv) or not isinstance(error, USER_ERRORS):
    raise error
  sys.exit(f'Error: {one_line(error, permission_hint)} [traceback: {TRACEBACK_ENV}=1]')


def start(argv) -> None:
  """What every absl command does first: refuse stray arguments, quiet the logs.

  It also turns on JAX's persistent compilation cache
  (`compilation.use_persistent_cache`).

  The console shows progress bars and result lines; libraries' INFO logs
  (orbax saves, TFDS) would drown them. --verbosity=0 brings them back.
  """
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from irstd_jax import compilation  # pylint: disable=g-import-not-at-top
  compilation.use_persistent_cache()
