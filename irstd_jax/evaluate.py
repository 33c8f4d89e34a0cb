"""Scores predictions made by anything against ground truth.

    python -m irstd_jax.evaluate --predictions=DIR --masks=MASK_DIR
    python -m irstd_jax.evaluate --predictions=DIR --dataset=sirst_v1 --split=test

`--predictions` holds probability maps or binary masks (8- or 16-bit PNG or
another image format, or .npy), found recursively and matched to the masks
by file name (without extension; a mask suffix such as `_pixels0` is found
automatically). An `irstd_jax.predict` output folder is read from its
`probs/` (else `masks/`). Every metric of `irstd_jax.metrics` is printed for
each variant the metrics offer, and written as evaluation.json, with the ROC
and Pd-Fa curves as curves.png when the predictions are probabilities.
Predictions without a mask, masks without a prediction, sizes that differ
and unreadable files are listed (and make the exit status 2); the rest is
scored. ground_truth_targets.csv lists every ground-truth target (place,
area, the map's peak on it) and whether Pd found it: which targets a model
misses.

Reading a map: 16-bit values are v / 65535, 8-bit v / 255, float .npy as
they are (probabilities in [0, 1]); a map whose values are only {0, 1} or
{0, max} is a binary mask. Colour images use their brightest channel.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import PIL.Image
from scipy import ndimage

from irstd_jax import cli
from irstd_jax import inference
from irstd_jax import metric_writers
from irstd_jax import metrics
from irstd_jax.datasets import imageio
from irstd_jax.evaluation import curves
from irstd_jax.evaluation import report

FLAGS = flags.FLAGS

PREDICTION_EXTENSIONS = imageio.IMAGE_EXTENSIONS + ('.npy',)
EXIT_MISMATCHED = 2
# Table columns beyond report.TABLE_COLUMNS: key, title, scale.
_EXTRA_COLUMNS = (('precision', 'P', 100), ('recall', 'R', 100), ('auc', 'AUC', 1),
                  ('targets', 'targets', 1), ('matched_targets', 'matched', 1),
                  ('fa_pixels', 'Fa pixels', 1))


def prediction_folder(directory: str) -> str:
  """The folder of maps: an irstd_jax.predict output's probs/ (else masks/)."""
  if os.path.isfile(os.path.join(directory, 'predict.json')):
    for sub in ('probs', 'masks'):
      if os.path.isdir(os.path.join(directory, sub)):
        return os.path.join(directory, sub)
  return directory


def index_files(directory: str, extensions: Sequence[str]) -> dict[str, str]:
  """File name without extension -> path, searched recursively.

  Raises a ValueError when two files share a name, since either could be
  meant.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(2, 'No such folder', directory)
  found: dict[str, str] = {}
  duplicates = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if name.startswith('.') or ext.lower() not in extensions:
        continue
      if stem in found:
        duplicates.append(f'{found[stem]} and {os.path.join(root, name)}')
      found[stem] = os.path.join(root, name)
  if duplicates:
    raise ValueError(f'{directory}: {len(duplicates)} file names occur twice ('
                     f'{"; ".join(duplicates[:3])}); matching is by name, keep one of each.')
  return found


def read_prediction(path: str) -> tuple[np.ndarray, bool]:
  """(float32 map, whether it is a binary mask); ValueError naming the file."""
  try:
    if path.lower().endswith('.npy'):
      values = np.load(path, allow_pickle=False)
    else:
      with PIL.Image.open(path) as image:
        image.load()
        if image.mode in ('P', 'RGB', 'RGBA', 'LA', 'CMYK', 'YCbCr'):
          values = np.asarray(image.convert('RGB')).max(axis=-1)
        elif image.mode == '1':
          values = np.asarray(image, np.uint8)
        else:
          values = np.asarray(image)
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise ValueError(f'cannot read {path}: {e}') from e
  values = np.squeeze(values)
  if values.ndim != 2:
    raise ValueError(f'{path}: a map must be 2-D, got shape {values.shape}')
  if values.dtype == bool:
    return values.astype(np.float32), True
  if values.dtype.kind in 'ui':
    top = int(values.max(initial=0))
    low = int(values.min(initial=0))
    if low < 0:
      raise ValueError(f'{path}: negative values in an integer map')
    nonzero = np.count_nonzero(values)
    if top <= 1 or nonzero == np.count_nonzero(values == top) and top in (255, 65535):
      return (values > 0).astype(np.float32), True
    if values.dtype == np.uint8:
      return values.astype(np.float32) / np.float32(255), False
    if top <= inference.PROB_SCALE:
      return inference.uint16_to_probs(values), False
    raise ValueError(f'{path}: integer values up to {top}; save probabilities as 8- or '
                     '16-bit maps or float .npy')
  values = values.astype(np.float32)
  if np.isnan(values).any() or values.min() < 0 or values.max() > 1:
    raise ValueError(f'{path}: values must be probabilities in [0, 1], got '
                     f'[{np.nanmin(values)}, {np.nanmax(values)}] (apply a sigmoid to logits)')
  binary = bool(np.all((values == 0) | (values == 1)))
  return values, binary


def folder_masks(directory: str, names: Sequence[str], suffix: str | None = None
                 ) -> tuple[dict[str, Callable[[], np.ndarray]], str]:
  """Masks of a folder by name (suffix removed), read when called; and the suffix."""
  files = index_files(directory, imageio.IMAGE_EXTENSIONS)
  if suffix is None:
    from irstd_jax.datasets import irstd_folder  # pylint: disable=g-import-not-at-top
    suffix = irstd_folder.infer_mask_suffix(sorted(names), sorted(files))
  masks = {}
  for stem, path in files.items():
    if suffix and not stem.endswith(suffix):
      continue
    masks[stem[:len(stem) - len(suffix)] if suffix else stem] = (
        lambda path=path: imageio.read_mask(path))
  return masks, suffix


def dataset_masks(name: str, split: str, **kwargs) -> dict[str, Callable[[], np.ndarray]]:
  """Masks of a dataset split by example id."""
  from irstd_jax import datasets  # pylint: disable=g-import-not-at-top  (TFDS)
  source = datasets.load(name, split, **kwargs)
  masks = {}
  for example in source:
    example_id = example['id']
    example_id = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
    mask = np.asarray(example['mask'])
    masks[example_id] = lambda mask=mask: (mask[..., 0] if mask.ndim == 3 else mask)
  return masks


def variants() -> list[tuple[str, dict[str, Any]]]:
  """(row label, `metrics.score` options) of every variant the metrics offer."""
  rows = [('default', {}), ('pd_fa_relative', {'pd_fa_relative': True})]
  rows += [(f'fa_variant={v}', {'fa_variant': v}) for v in metrics.FA_VARIANTS
           if v != 'basicirstd']
  return rows


def evaluate(predictions: dict[str, str], masks: dict[str, Callable[[], np.ndarray]], *,
             threshold: float = 0.5) -> dict[str, Any]:
  """Scores the matched pairs; lists everything that could not be matched.

  Args:
    predictions: name -> prediction file.
    masks: name -> a function reading that mask.
    threshold: probability threshold (strict >).

  Returns:
    dict: 'images' (scored), 'kind' ('probabilities' or 'binary'),
    'metrics' (variant -> `metrics.score` dict), 'targets' (`target_rows`),
    and the lists 'missing_masks', 'missing_predictions', 'size_mismatches',
    'unreadable'.
  """
  names = sorted(set(predictions) & set(masks))
  out: dict[str, Any] = {
      'threshold': threshold,
      'missing_masks': sorted(set(predictions) - set(masks)),
      'missing_predictions': sorted(set(masks) - set(predictions)),
      'size_mismatches': [], 'unreadable': []}
  preds, truths, scored, binary = [], [], [], True
  for name in names:
    try:
      pred, is_binary = read_prediction(predictions[name])
      mask = masks[name]()
    except ValueError as error:
      out['unreadable'].append({'name': name, 'error': cli.one_line(error)})
      continue
    if pred.shape != mask.shape:
      out['size_mismatches'].append({'name': name, 'prediction': list(pred.shape),
                                     'mask': list(mask.shape)})
      continue
    preds.append(pred)
    truths.append(mask)
    scored.append(name)
    binary &= is_binary
  out['images'] = len(preds)
  out['kind'] = 'binary' if binary else 'probabilities'
  if not preds:
    raise ValueError('No prediction matches a mask of the same size: '
                     + _mismatch_summary(out) + '. Check that the file names agree '
                     '(--mask_suffix) and point --predictions and --masks at the right folders.')
  out['metrics'] = {label: metrics.score(preds, truths, threshold, **options)
                    for label, options in variants()}
  out['roc_note'] = None if binary else roc_note(out['metrics']['default'], preds)
  out['targets'] = target_rows(scored, preds, truths, threshold)
  return out


TARGET_FIELDS = ('image', 'target', 'row', 'col', 'area', 'peak', 'found', 'distance')
def target_rows(names: Sequence[str], preds: Sequence[np.ndarray],
                masks: Sequence[np.ndarray], threshold: float = 0.5) -> list[dict[str, Any]]:
  """One row per ground-truth target, and whether the default Pd found it.

  The verdicts are `metrics.explain`'s 'distance' rule, BasicIRSTD's (the
  metrics' default): 8-connected components of the mask and of the map >
  threshold, each target in label order taking the first unclaimed predicted
  component whose centroid is within 3 pixels. A row: image name, target
  number (label order), centroid row / col, area in pixels, the map's peak on
  the target, found, and the distance to the nearest predicted centroid
  (None without any).
  """
  rows = []
  for name, pred, mask in zip(names, preds, masks):
    found = metrics.explain(pred, mask, threshold)
    labels = range(1, found.num_targets + 1)
    areas = ndimage.sum_labels(np.ones_like(found.targets), found.targets, labels)
    peaks = ndimage.maximum(pred, found.targets, labels)
    for index, (centre, area, peak) in enumerate(zip(found.target_centroids, areas, peaks)):
      distances = np.hypot(*(found.predicted_centroids - centre).T)
      rows.append({'image': name, 'target': index + 1, 'row': round(float(centre[0]), 2),
                   'col': round(float(centre[1]), 2), 'area': int(area),
                   'peak': round(float(peak), 6),
                   'found': bool(found.detected['distance'][index]),
                   'distance': round(float(distances.min()), 2) if distances.size else None})
  return rows


def roc_note(scores: dict[str, Any], preds: Sequence[np.ndarray]) -> str | None:
  """Why the AUC is partial, when the ROC stops short of (1, 1); else None.

  The reference ROC marks a pixel positive when p > t, down to t = 0, so
  pixels exactly 0 are never positive: maps with many of them (quantised
  16-bit PNGs, thresholded or clipped maps) end the curve early and the AUC
  measures only that part (a trained GaNet's 16-bit maps of SIRST-v1: the
  curve ended at a false-positive rate of 0.0017, AUC 0.0012; its run's own
  evaluation of the float maps gave 0.855).
  """
  reach = float(np.max(scores['roc']['fpr']))
  if reach >= 0.99:
    return None
  zeros = sum(int(np.count_nonzero(p == 0)) for p in preds) / sum(p.size for p in preds)
  return (f'The ROC reaches a false-positive rate of only {reach:.4f}: {zeros:.1%} of the '
          'map pixels are exactly 0, which no threshold marks positive (p > t), so the '
          'AUC covers that part of the curve only. 16-bit PNG maps round probabilities '
          'below 7.6e-6 to 0; float maps (predict --prob_format=npy) give the whole curve.')


def _mismatch_summary(result: dict[str, Any]) -> str:
  parts = [f'{len(result[k])} {k.replace("_", " ")}' for k in
           ('missing_masks', 'missing_predictions', 'size_mismatches', 'unreadable')
           if result[k]]
  return ', '.join(parts) or 'nothing to score'


def table(result: dict[str, Any]) -> str:
  """A markdown table: one row per variant, the metrics in the field's units."""
  columns = report.TABLE_COLUMNS + _EXTRA_COLUMNS
  lines = ['| variant | ' + ' | '.join(title for _, title, _ in columns) + ' |',
           '|---|' + '---|' * len(columns)]
  for label, values in result['metrics'].items():
    cells = []
    for key, _, scale in columns:
      value = values.get(key)
      if value is None or (key == 'auc' and result['kind'] == 'binary'):
        cells.append('-')
      elif isinstance(value, (int, np.integer)) and scale == 1:
        cells.append(str(int(value)))
      else:
        cells.append(f'{float(value) * scale:.4f}' if key == 'auc' else
                     f'{float(value) * scale:.2f}')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def mismatch_lines(result: dict[str, Any], limit: int = 20) -> list[str]:
  """Human-readable lines for everything not scored."""
  lines = []
  for key, what in (('missing_masks', 'predictions without a mask'),
                    ('missing_predictions', 'masks without a prediction')):
    if result[key]:
      names = result[key]
      lines.append(f'{len(names)} {what}: ' + ', '.join(names[:limit])
                   + (' ...' if len(names) > limit else ''))
  for item in result['size_mismatches'][:limit]:
    lines.append(f"size mismatch {item['name']}: prediction {item['prediction']}, "
                 f"mask {item['mask']}")
  for item in result['unreadable'][:limit]:
    lines.append(f"unreadable {item['name']}: {item['error']}")
  return lines


def write(result: dict[str, Any], output: str, title: str = '') -> list[str]:
  """evaluation.json, ground_truth_targets.csv and, for probabilities, curves.png.

  Returns the paths written.
  """
  os.makedirs(output, exist_ok=True)
  path = os.path.join(output, 'evaluation.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(metric_writers.to_json({k: v for k, v in result.items() if k != 'targets'}),
              f, indent=1)
  written = [path, os.path.join(output, 'ground_truth_targets.csv')]
  with open(written[-1], 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=TARGET_FIELDS)
    writer.writeheader()
    writer.writerows(result['targets'])
  if result['kind'] == 'probabilities':
    written.append(os.path.join(output, 'curves.png'))
    curves.save_curves(written[-1], result['metrics']['default'], title)
  return written


def _options(items: Sequence[str]) -> dict[str, Any]:
  from irstd_jax import predict  # pylint: disable=g-import-not-at-top
  return predict._model_options(items)  # pylint: disable=protected-access


def main(argv):
  cli.start(argv)
  try:
    if bool(FLAGS.masks) == bool(FLAGS.dataset):
      raise ValueError('Give the ground truth as --masks=DIR or as --dataset=NAME '
                       '--split=SPLIT.')
    folder = prediction_folder(FLAGS.predictions)
    predictions = index_files(folder, PREDICTION_EXTENSIONS)
    if not predictions:
      raise FileNotFoundError(2, 'No .png or .npy predictions in', folder)
    if FLAGS.masks:
      masks, suffix = folder_masks(FLAGS.masks, list(predictions), FLAGS.mask_suffix)
      truth = FLAGS.masks + (f' (mask suffix {suffix!r})' if suffix else '')
    else:
      masks = dataset_masks(FLAGS.dataset, FLAGS.split, source_dir=FLAGS.source_dir,
                            data_dir=FLAGS.data_dir, **_options(FLAGS.dataset_option))
      truth = f'{FLAGS.dataset}/{FLAGS.split}'
    result = evaluate(predictions, masks, threshold=FLAGS.threshold)
    result.update(predictions=os.path.abspath(folder), ground_truth=truth)
    output = FLAGS.output or (FLAGS.predictions if folder != FLAGS.predictions
                              else os.path.normpath(FLAGS.predictions) + '_evaluation')
    written = write(result, output, f'{folder} against {truth}')
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, sys.argv, 'choose a writable --output')
  print(f"{result['images']} images ({result['kind']}) from {folder} against {truth}, "
        f"threshold {result['threshold']}:\n")
  print(table(result))
  print('\nmIoU, nIoU, F1, P, R, Pd in percent; Fa in false-alarm pixels per million.')
  if result.get('roc_note'):
    print(result['roc_note'])
  missed = [row for row in result['targets'] if not row['found']]
  print(f"Missed {len(missed)} of {len(result['targets'])} targets (ground_truth_targets.csv: "
        'each target, its area, the peak on it, the nearest predicted centroid).')
  print('Wrote ' + ', '.join(written) + '.')
  problems = mismatch_lines(result)
  if problems:
    print('\nNot scored:\n  ' + '\n  '.join(problems), file=sys.stderr)
    sys.exit(EXIT_MISMATCHED)



def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing the module defines none)."""
  flags.DEFINE_string('predictions', None, 'Folder of probability maps or binary masks '
                      '(PNG or .npy), or an irstd_jax.predict --output.')
  flags.DEFINE_string('masks', None, 'Folder of ground-truth masks.')
  flags.DEFINE_string('dataset', None, 'Or a dataset name (irstd_jax.datasets), with --split.')
  flags.DEFINE_string('split', 'test', 'With --dataset: the split.')
  flags.DEFINE_string('source_dir', None, 'With --dataset: its raw files (when not built yet).')
  flags.DEFINE_string('data_dir', None, 'With --dataset: where its built files are.')
  flags.DEFINE_multi_string('dataset_option', [], 'With --dataset: NAME=VALUE, e.g. '
                            'config=basicirstd (repeatable).')
  flags.DEFINE_string('mask_suffix', None, 'Text between the name and the extension of the '
                      'mask files (default: found automatically, e.g. _pixels0).')
  flags.DEFINE_float('threshold', 0.5, 'Probability threshold (strict >).')
  flags.DEFINE_string('output', None, 'Folder for evaluation.json, ground_truth_targets.csv '
                      'and curves.png (default: the predict output folder, else '
                      'PREDICTIONS_evaluation).')
  flags.mark_flag_as_required('predictions')


if __name__ == '__main__':
  define_flags()
  app.run(main)
