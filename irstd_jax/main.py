"""Entry point: `python -m irstd_jax.main --config=configs/ganet.py --workdir=DIR`.

Modes: `train` (default; resumes what DIR holds) and `eval` (scores
`--checkpoint` of DIR on `--config.eval.split`). Multi-host runs call
`jax.distributed.initialize` when a launcher's environment is present (see
`sharding.initialize_distributed`). The work is done in `irstd_jax.train`.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from irstd_jax import sharding

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/ganet.py or configs/ganet.py:quick.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and pictures.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'Train (and resume), or '
                  'evaluate a checkpoint.')
flags.DEFINE_string('checkpoint', 'best', "Eval mode: 'best', 'latest' or a step.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    # The console shows the progress bar and per-epoch lines; libraries' INFO
    # logs (orbax saves, TFDS) would drown them. --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  sharding.initialize_distributed()
  logging.info('JAX %s: process %d of %d, devices %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices())
  from irstd_jax import train  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, checkpoint=FLAGS.checkpoint)
  except (train.NonFiniteLossError, train.IncompatibleWorkdirError, train.DatasetError,
          FileNotFoundError) as error:
    # Errors with a message meant for the user: no traceback to dig through.
    raise SystemExit(f'Error: {error}') from None


if __name__ == '__main__':
  app.run(main)
