"""Detects targets in your own images and videos.

    python -m irstd_jax.predict --workdir=workdirs/quick --input=DIR --output=OUT
    python -m irstd_jax.predict --model=ganet --torch_weights=GaNet.pth \\
        --input='shots/*.png' --input=clip.mp4 --output=OUT

The model comes from a training run (`--workdir`, `--checkpoint`) or from
official PyTorch weights (`--model`, `--torch_weights`, through
`irstd_jax.convert`). `--input` (repeatable) is an image, a folder (searched
recursively for images and videos), a glob or a video. OUT receives, per image
or video frame, a binary mask, a probability map and an overlay (for a
video: an annotated video), plus targets.csv / targets.json (one row per
detected target) and predict.json (the model, the settings, the failures,
the speed). docs/inference.md describes the formats.

Exit status: 0 when every input was processed; 2 when some could not be read
(each is named, the others are processed); 1 for a mistake (one line says
what to fix).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import glob
import json
import os
import shutil
import sys
import time
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from tqdm import auto as tqdm

from irstd_jax import cli
from irstd_jax import inference
from irstd_jax import video
from irstd_jax.datasets import imageio
from irstd_jax.evaluation import pictures

FLAGS = flags.FLAGS

MANIFEST = 'predict.json'
OUTPUT_KINDS = ('masks', 'probs', 'overlays')
# What predict writes in --output (and --overwrite removes).
_WRITTEN = ('masks', 'probs', 'overlays', 'videos', 'targets.csv', 'targets.json', MANIFEST)
# Exit status when some inputs failed and the others were processed.
EXIT_SOME_FAILED = 2


@dataclasses.dataclass(frozen=True)
class Input:
  """One input file."""
  path: str
  name: str   # Output name: the path below its --input, without extension.
  kind: str   # 'image' or 'video'


def _kind(path: str) -> str:
  return 'video' if path.lower().endswith(video.VIDEO_EXTENSIONS) else 'image'


def _known(path: str) -> bool:
  return path.lower().endswith(imageio.IMAGE_EXTENSIONS + video.VIDEO_EXTENSIONS)


def _walk(folder: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.join(root, f) for f in sorted(files)
              if not f.startswith('.') and _known(f)]
  return found


def find_inputs(patterns: Sequence[str]) -> list[Input]:
  """The files named by `--input`s: files, folders (recursive) and globs.

  A folder contributes its images and videos (by extension); a file or a
  glob match is taken whatever its extension (videos by theirs).
  """
  inputs = []
  for pattern in patterns:
    if os.path.isdir(pattern):
      files, root = _walk(pattern), pattern
      if not files:
        raise FileNotFoundError(2, 'No images or videos in the --input folder', pattern)
    elif os.path.isfile(pattern):
      files, root = [pattern], os.path.dirname(pattern)
    elif glob.has_magic(pattern):
      files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
      if not files:
        raise FileNotFoundError(2, 'No file matches the --input glob', pattern)
      root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files])
    else:
      raise FileNotFoundError(2, 'No such --input file or folder', pattern)
    for path in files:
      relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root or '.'))
      name = os.path.splitext(relative)[0].replace(os.sep, '/')
      inputs.append(Input(path, name, _kind(path)))
  names: dict[str, str] = {}
  for item in inputs:
    if item.name in names:
      raise ValueError(f'{names[item.name]} and {item.path} would write the same outputs '
                       f'({item.name}); rename one or predict them separately.')
    names[item.name] = item.path
  return inputs


def prepare_output(output: str, description: dict[str, Any], overwrite: bool) -> None:
  """Refuses an --output holding another model's results unless `overwrite`."""
  manifest = os.path.join(output, MANIFEST)
  if os.path.isdir(output) and os.listdir(output):
    previous = None
    if os.path.isfile(manifest):
      with open(manifest, encoding='utf-8') as f:
        previous = json.load(f).get('model')
    if previous != description and not overwrite:
      what = ('results of another model' if previous is not None
              else 'files that irstd_jax.predict did not write')
      raise FileExistsError(17, f'The --output folder holds {what} (see its {MANIFEST}): '
                            'choose another --output, or pass --overwrite', output)
    if previous is not None and previous != description:
      for entry in _WRITTEN:
        path = os.path.join(output, entry)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)
  os.makedirs(output, exist_ok=True)


class _Writer:
  """Writes one image's (or frame's) outputs and collects its target rows."""

  def __init__(self, output: str, predictor: inference.Predictor, outputs: Sequence[str],
               prob_format: str):
    self.output = output
    self.predictor = predictor
    self.outputs = set(outputs)
    self.prob_format = prob_format
    self.rows: list[dict[str, Any]] = []

  def _path(self, kind: str, name: str, ext: str) -> str:
    path = os.path.join(self.output, kind, *name.split('/')) + ext
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def image(self, file: str, name: str, frame: int | None, gray: np.ndarray,
            probs: np.ndarray, per_frame_overlay: bool = True) -> np.ndarray:
    """Writes the outputs; returns the overlay (for a video)."""
    threshold = self.predictor.threshold
    mask = probs > np.float32(threshold)
    targets = inference.find_targets(mask, probs)
    for target in targets:
      self.rows.append({'file': file, 'frame': frame, **target})
    if 'masks' in self.outputs:
      pictures.save_png(self._path('masks', name, '.png'), mask.astype(np.uint8) * 255)
    if 'probs' in self.outputs:
      if self.prob_format == 'npy':
        np.save(self._path('probs', name, '.npy'), probs.astype(np.float32))
      else:
        pictures.save_png(self._path('probs', name, '.png'),
                          inference.probs_to_uint16(probs, threshold))
    overlay = None
    if 'overlays' in self.outputs:
      overlay = pictures.detections(gray, mask, targets)
      if per_frame_overlay:
        pictures.save_png(self._path('overlays', name, '.png'), overlay)
    return overlay

  def write_targets(self) -> None:
    fields = ('file', 'frame') + inference.TARGET_FIELDS
    with open(os.path.join(self.output, 'targets.csv'), 'w', newline='', encoding='utf-8') as f:
      writer = csv.DictWriter(f, fieldnames=fields)
      writer.writeheader()
      for row in self.rows:
        writer.writerow({k: _csv_value(row[k]) for k in fields})
    with open(os.path.join(self.output, 'targets.json'), 'w', encoding='utf-8') as f:
      json.dump(self.rows, f, indent=1)


def _csv_value(value: Any) -> Any:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.6g}'
  return value


def run(predictor: inference.Predictor, inputs: Sequence[Input], output: str, *,
        outputs: Sequence[str] = OUTPUT_KINDS, prob_format: str = 'png',
        overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
  """Predicts every input and writes the results to `output`.

  Unreadable inputs are reported (stderr and predict.json) and skipped.

  Returns:
    predict.json's content: the model, settings, counts, failures and speed.
  """
  unknown = set(outputs) - set(OUTPUT_KINDS)
  if unknown:
    raise ValueError(f'Unknown --outputs {sorted(unknown)}; choose from {OUTPUT_KINDS}.')
  if prob_format not in ('png', 'npy'):
    raise ValueError(f"prob_format={prob_format!r}: use 'png' or 'npy'.")
  videos = [i for i in inputs if i.kind == 'video']
  if videos and not video.available():
    raise ValueError(f'{videos[0].path} is a video. {video.INSTALL_HINT}')
  prepare_output(output, predictor.description, overwrite)
  manifest = {
      'model': predictor.description, 'threshold': predictor.threshold,
      'normalization': {'mean': predictor.mean, 'std': predictor.std},
      'num_channels': predictor.num_channels, 'resolution': predictor.resolution,
      'pad_multiple': predictor.pad_multiple, 'high_bit_depth': predictor.high_bit_depth,
      'outputs': list(outputs), 'prob_format': prob_format, 'inputs': len(inputs),
      'status': 'running'}
  _write_json(os.path.join(output, MANIFEST), manifest)
  writer = _Writer(output, predictor, outputs, prob_format)
  failed: list[dict[str, str]] = []
  images = [i for i in inputs if i.kind == 'image']
  total = len(images)
  for item in videos:
    try:
      total += video.probe(item.path)[0] or 0
    except video.VideoError:
      pass  # Reported when it is read.
  progress = tqdm.tqdm(total=total, unit='image', disable=not show_progress,
                       dynamic_ncols=True, mininterval=0.5)

  def report(path: str, error: Exception) -> None:
    message = cli.one_line(error, 'choose a writable --output')
    failed.append({'path': path, 'error': message})
    progress.write(f'skipped {path}: {message}', file=sys.stderr)

  started = time.perf_counter()
  compiling = predictor.compile_seconds
  count = 0

  def done() -> None:
    nonlocal count
    count += 1
    progress.update(1)

  # Images: sizes from the headers first, so that at most max_shapes shapes compile.
  sizes = {}
  for item in images:
    try:
      sizes[item.path] = inference.image_size(item.path)
    except ValueError as error:
      report(item.path, error)
      progress.update(1)

  def read() -> Iterator[tuple[Input, np.ndarray]]:
    for item in images:
      if item.path in sizes:
        try:
          yield item, inference.read_image(item.path, high_bit_depth=predictor.high_bit_depth)
        except ValueError as error:
          report(item.path, error)
          progress.update(1)

  for item, gray, probs in predictor.stream(read(), shapes=sizes.values()):
    writer.image(item.path, item.name, None, gray, probs)
    done()

  for item in videos:
    _run_video(predictor, item, writer, output, 'overlays' in outputs, report, done)
  progress.close()
  writer.write_targets()

  seconds = time.perf_counter() - started
  compiling = predictor.compile_seconds - compiling
  manifest.update(status='done', images=count, failed=failed, seconds=round(seconds, 3),
                  compile_seconds=round(compiling, 3),
                  images_per_second=count / seconds if seconds else None,
                  images_per_second_without_compilation=(
                      count / (seconds - compiling) if seconds > compiling else None))
  _write_json(os.path.join(output, MANIFEST), manifest)
  return manifest


def _run_video(predictor, item: Input, writer: _Writer, output: str, annotate: bool,
               report, done) -> None:
  """One video: its frames through the predictor, an annotated copy written."""
  try:
    fps = video.probe(item.path)[1]
  except video.VideoError as error:
    report(item.path, error)
    return
  errors: list[Exception] = []

  def frames():
    try:
      for index, frame in enumerate(video.read_frames(item.path)):
        yield index, frame
    except video.VideoError as error:
      errors.append(error)

  annotated = None
  if annotate:
    path = os.path.join(output, 'videos', *item.name.split('/')) + '.mp4'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    annotated = video.VideoWriter(path, fps)
  try:
    for index, gray, probs in predictor.stream(frames()):
      overlay = writer.image(item.path, f'{item.name}/{index:06d}', index, gray, probs,
                             per_frame_overlay=False)
      if annotated is not None:
        annotated.write(overlay)
      done()
  finally:
    if annotated is not None:
      annotated.close()
  if errors:
    report(item.path, errors[0])


def _write_json(path: str, value: Any) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1, default=str)


# ---------------------------------------------------------------------------
# Command line.

def _model_options(items: Sequence[str]) -> dict[str, Any]:
  options = {}
  for item in items:
    key, has_value, value = item.partition('=')
    if not has_value or not key.strip():
      raise ValueError(f'--model_option={item!r}: write NAME=VALUE, e.g. img_size=256.')
    try:
      options[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      options[key.strip()] = value.strip()
  return options


def _normalization(text: str) -> tuple[float, float]:
  from irstd_jax import recipes  # pylint: disable=g-import-not-at-top
  if ',' in text:
    try:
      mean, std = (float(v) for v in text.split(','))
    except ValueError as e:
      raise ValueError(f"--normalization={text!r}: write 'MEAN,STD' in grey levels, or a "
                       "name such as 'unit'.") from e
    return mean, std
  return recipes.normalization(text)


def build_predictor() -> inference.Predictor:
  """The Predictor the flags describe."""
  overrides: dict[str, Any] = {'batch_size': FLAGS.batch_size,
                               'high_bit_depth': FLAGS.high_bit_depth}
  if FLAGS.threshold is not None:
    overrides['threshold'] = FLAGS.threshold
  if FLAGS.normalization:
    overrides['mean'], overrides['std'] = _normalization(FLAGS.normalization)
  if bool(FLAGS.workdir) == bool(FLAGS.torch_weights):
    raise ValueError('Give the model either as --workdir=DIR (a training run) or as '
                     '--model=NAME --torch_weights=FILE (official weights).')
  if FLAGS.workdir:
    if FLAGS.model or FLAGS.model_option:
      raise ValueError('--model and --model_option go with --torch_weights; a --workdir '
                       'knows its model.')
    model, settings = inference.load_workdir(FLAGS.workdir, FLAGS.checkpoint)
  else:
    if not FLAGS.model:
      raise ValueError('--torch_weights needs --model=ganet, gglnet or unet.')
    if not os.path.isfile(FLAGS.torch_weights):
      raise FileNotFoundError(2, 'No such --torch_weights file', FLAGS.torch_weights)
    model, settings = inference.load_torch(FLAGS.model, FLAGS.torch_weights,
                                           **_model_options(FLAGS.model_option))
  resolution = FLAGS.resolution
  if resolution == 'eval':
    resolution = settings['description'].get('eval_resolution', 'native')
  elif resolution != 'native':
    try:
      resolution = int(resolution)
    except ValueError as e:
      raise ValueError(f"--resolution={resolution!r}: use 'native', 'eval' or a side "
                       'in pixels.') from e
  overrides['resolution'] = resolution
  return inference.Predictor(model, **{**settings, **overrides})


def main(argv):
  cli.start(argv)
  try:
    inputs = find_inputs(FLAGS.input)
    predictor = build_predictor()
    result = run(predictor, inputs, FLAGS.output, outputs=FLAGS.outputs,
                 prob_format=FLAGS.prob_format, overwrite=FLAGS.overwrite)
  except Exception as error:  # pylint: disable=broad-except
    cli.fail(error, sys.argv, 'choose a writable --output')
  rate = result['images_per_second'] or 0.0
  steady = result['images_per_second_without_compilation']
  print(f"{result['images']} images in {result['seconds']:.1f} s: {rate:.2f} images/s"
        + (f" ({steady:.2f} images/s without the {result['compile_seconds']:.1f} s of "
           'compilation)' if steady else '')
        + f'. Results in {FLAGS.output}.')
  if result['failed']:
    print(f"{len(result['failed'])} input(s) could not be read and were skipped "
          f'(listed in {os.path.join(FLAGS.output, MANIFEST)}).', file=sys.stderr)
    sys.exit(EXIT_SOME_FAILED)



def define_flags() -> None:
  """The command line's flags (defined only when run as a program, so that
  importing the module defines none)."""
  flags.DEFINE_string('workdir', None, 'A training run (holds config.json and checkpoints/).')
  flags.DEFINE_string('checkpoint', 'best', "With --workdir: 'best', 'latest' or a step.")
  flags.DEFINE_string('model', None, 'With --torch_weights: ganet, gglnet or unet.')
  flags.DEFINE_string('torch_weights', None, 'Official weights: a .pth (needs torch) or a '
                      '.npz of the official state dict.')
  flags.DEFINE_multi_string('model_option', [], 'With --torch_weights: a model option as '
                            'NAME=VALUE, e.g. img_size=256 (repeatable).')
  flags.DEFINE_multi_string('input', None, 'An image, a folder (recursive), a glob or a video '
                            '(repeatable).')
  flags.DEFINE_string('output', None, 'Folder for the results.')
  flags.DEFINE_float('threshold', None, 'Probability threshold of masks and targets '
                     '(default: the checkpoint\'s eval.threshold, else 0.5).')
  flags.DEFINE_integer('batch_size', 8, 'Images per batch (split over the devices).')
  flags.DEFINE_string('resolution', 'native', "'native' (zero-padded to a multiple of 32, "
                      "as the evaluation), 'eval' (the checkpoint's evaluation resolution) "
                      'or a side to resize to (probabilities resized back).')
  flags.DEFINE_string('normalization', None, "Override the stored normalisation: 'unit' "
                      "(/255), a dataset name, or 'MEAN,STD' in grey levels.")
  flags.DEFINE_enum('high_bit_depth', 'minmax', list(imageio.HIGH_BIT_DEPTH_RULES),
                    '16-bit images: stretched from their min / max, or divided by 257.')
  flags.DEFINE_list('outputs', ['masks', 'probs', 'overlays'], 'What to write per image: '
                    'masks, probs, overlays (for a video: the annotated video).')
  flags.DEFINE_enum('prob_format', 'png', ['png', 'npy'], 'Probability maps as 16-bit PNG '
                    'or float32 .npy.')
  flags.DEFINE_bool('overwrite', False, 'Write into an --output that holds results of '
                    'another model (its previous results are removed).')
  flags.mark_flags_as_required(['input', 'output'])


if __name__ == '__main__':
  define_flags()
  app.run(main)
