r"""Builds IRSTD datasets ahead of time (the `tfds build` CLI needs TensorFlow).

  python -m irstd_jax.datasets.build sirst_v1 --source_dir ../shared/datasets/sirst_v1
  python -m irstd_jax.datasets.build sirst_v1 --config basicirstd
  python -m irstd_jax.datasets.build irstd_synthetic --set num_train=64 --set seed=1
  python -m irstd_jax.datasets.build nudt_sirst --source_dir datasets/NUDT-SIRST

`--register_checksums` records the sizes and SHA-256 of downloaded archives
in irstd_jax/datasets/checksums.tsv (run it once online for sirst_v1, whose
images.zip has no registered checksum yet).
"""

from __future__ import annotations

import argparse
import sys

import tensorflow_datasets as tfds

from irstd_jax import cli
from irstd_jax import datasets


def _value(text: str):
  try:
    return int(text)
  except ValueError:
    return text


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('name', choices=datasets.names())
  parser.add_argument('--config', default=None, help='named builder config')
  parser.add_argument('--source_dir', default=None,
                      help='folder with the raw dataset')
  parser.add_argument('--data_dir', default=None,
                      help=f'output root (default ${datasets.DATA_DIR_ENV} or '
                      '~/tensorflow_datasets)')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='builder option, e.g. num_train=64 (repeatable)')
  parser.add_argument('--register_checksums', action='store_true')
  args = parser.parse_args(argv)
  options = {}
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep:
      parser.error(f'--set {item!r}: use KEY=VALUE.')
    options[key] = _value(value)
  if args.config:
    options['config'] = args.config
  try:
    builder = datasets.builder(args.name, source_dir=args.source_dir,
                               data_dir=args.data_dir, **options)
    if builder.is_prepared():
      print(f'{builder.data_dir} already built.')
    else:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=args.source_dir,
          register_checksums=args.register_checksums))
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, sys.argv if argv is None else argv)
  for split, info in builder.info.splits.items():
    print(f'{args.name}/{builder.builder_config.name} {split}: '
          f'{info.num_examples} examples')
  print(f'Files: {builder.data_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
