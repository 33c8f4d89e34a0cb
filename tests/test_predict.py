"""predict and evaluate: outputs, bad inputs, video, official weights, eval-mode parity.

One tiny U-Net is trained once (1 epoch of the test_train config) and its
test split exported as PNG files; every case predicts with it, so the jitted
forward pass compiles once per shape.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import PIL.Image
import pytest
from test_train import TINY_CONFIG

from irstd_jax import config_lib
from irstd_jax import convert
from irstd_jax import evaluate
from irstd_jax import inference
from irstd_jax import metrics
from irstd_jax import predict
from irstd_jax import train
from irstd_jax import video
from irstd_jax.datasets import imageio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module', autouse=True)
def fast_compilation():
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A trained workdir, its config and the test split as PNG files."""
  root = tmp_path_factory.mktemp('predict')
  (root / 'tiny.py').write_text(TINY_CONFIG)
  config = config_lib.load_config(str(root / 'tiny.py'), 'epochs=1')
  config.dataset.data_dir = str(root / 'tfds')
  workdir = str(root / 'workdir')
  train.train_and_evaluate(config, workdir)
  (source,) = train.load_sources(config, ('test',))
  for sub in ('images', 'masks'):
    (root / 'split' / sub).mkdir(parents=True)
  for example in source:
    name = example['id']
    PIL.Image.fromarray(np.asarray(example['image'])[..., 0]).save(
        root / 'split' / 'images' / f'{name}.png')
    PIL.Image.fromarray(np.asarray(example['mask'])[..., 0] * 255).save(
        root / 'split' / 'masks' / f'{name}.png')
  return root, config, workdir


@pytest.fixture(scope='module')
def predictor(run_dir):
  return inference.Predictor.from_workdir(run_dir[2], 'best')


@pytest.fixture(scope='module')
def odd_inputs(run_dir):
  """Sizes, bit depths and colours, and two files that cannot be read."""
  folder = run_dir[0] / 'odd'
  (folder / 'sub').mkdir(parents=True)
  rng = np.random.default_rng(0)
  grey16 = rng.integers(0, 4096, (37, 61), dtype=np.uint16)
  rgb = rng.integers(0, 256, (45, 50, 3), dtype=np.uint8)
  PIL.Image.fromarray(grey16).save(folder / 'grey16.png')
  PIL.Image.fromarray(rgb).save(folder / 'sub' / 'rgb.png')
  (folder / 'corrupt.png').write_bytes(b'not an image at all')
  good = folder / 'truncated.png'
  PIL.Image.fromarray(rgb).save(good)
  good.write_bytes(good.read_bytes()[:200])
  (folder / 'notes.txt').write_text('not an input')
  return folder, {'grey16': grey16, 'sub/rgb': rgb}


@pytest.fixture(scope='module')
def predicted(run_dir, predictor, odd_inputs):
  root = run_dir[0]
  inputs = predict.find_inputs([str(root / 'split' / 'images'), str(odd_inputs[0])])
  output = str(root / 'out')
  return output, predict.run(predictor, inputs, output, show_progress=False)


def read_csv(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def test_outputs_are_present_and_the_targets_are_the_masks_components(predicted, run_dir):
  output, manifest = predicted
  names = sorted(os.listdir(run_dir[0] / 'split' / 'images'))
  assert manifest['images'] == len(names) + 2 and manifest['status'] == 'done'
  rows = read_csv(os.path.join(output, 'targets.csv'))
  assert rows == [{k: str(predict._csv_value(v)) for k, v in r.items()}
                  for r in json.load(open(os.path.join(output, 'targets.json')))]
  for name in [os.path.splitext(n)[0] for n in names] + ['grey16', 'sub/rgb']:
    mask = np.asarray(PIL.Image.open(os.path.join(output, 'masks', name + '.png')))
    probs = inference.uint16_to_probs(
        np.asarray(PIL.Image.open(os.path.join(output, 'probs', name + '.png'))))
    overlay = np.asarray(PIL.Image.open(os.path.join(output, 'overlays', name + '.png')))
    assert mask.shape == probs.shape == overlay.shape[:2]
    # The 16-bit map thresholded gives the written mask exactly.
    np.testing.assert_array_equal(mask > 0, probs > np.float32(manifest['threshold']))
    expected = inference.find_targets(mask, probs)
    mine = [r for r in rows if r['file'].endswith(name + '.png')]
    assert [int(r['area']) for r in mine] == [t['area'] for t in expected]
    assert [float(r['centroid_x']) for r in mine] == pytest.approx(
        [t['centroid_x'] for t in expected], rel=1e-5)
    # The metrics count the same components (8-connected).
    assert metrics.score([mask > 0], [mask > 0])['targets'] == len(mine)


def test_unreadable_files_are_named_and_skipped(predicted, odd_inputs):
  _, manifest = predicted
  failed = sorted(os.path.basename(f['path']) for f in manifest['failed'])
  assert failed == ['corrupt.png', 'truncated.png']
  assert all('cannot read' in f['error'] for f in manifest['failed'])


def test_any_size_bit_depth_and_colour_match_the_array_api(predicted, predictor, odd_inputs):
  output, _ = predicted
  for name, array in odd_inputs[1].items():
    probs = predictor.predict(array)
    assert probs.shape == array.shape[:2]
    written = np.asarray(PIL.Image.open(os.path.join(output, 'probs', name + '.png')))
    np.testing.assert_allclose(inference.uint16_to_probs(written), probs, atol=1 / 65535)


def test_mixed_sizes_come_back_in_the_input_order():
  """Images of several padded shapes run bucket by bucket; the lists keep their order."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from irstd_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build('unet', base_channels=4, rngs=nnx.Rngs(0))
  predictor = inference.Predictor(model, batch_size=2, max_shapes=2)
  rng = np.random.default_rng(0)
  sizes = [(70, 90), (20, 20), (64, 64), (20, 30), (30, 90)]
  images = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
  keyed = {k: p for k, _, p in predictor.stream(enumerate(images), shapes=sizes)}
  assert list(keyed) != list(range(len(sizes)))  # the stream's own order differs
  probs = predictor.predict(images)
  assert [p.shape for p in probs] == sizes
  for i, p in enumerate(probs):
    np.testing.assert_array_equal(p, keyed[i])
  found = predictor.detect(images)
  assert [f.probs.shape for f in found] == sizes


def test_components_are_eight_connected_as_the_metrics_count_them():
  mask = np.zeros((12, 12), bool)
  mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # one diagonal target
  mask[6, 6:9] = True
  mask[9, 2] = True
  probs = mask * 0.75
  targets = inference.find_targets(mask, probs)
  assert len(targets) == 3 == metrics.score([probs], [mask])['targets']
  assert targets[0] == {'target': 0, 'centroid_x': 2.0, 'centroid_y': 2.0, 'area': 3, 'x': 1,
                        'y': 1, 'width': 3, 'height': 3, 'peak_prob': 0.75, 'mean_prob': 0.75}


def test_16_bit_maps_keep_the_mask_at_the_threshold():
  probs = np.float32([0.5, np.nextafter(np.float32(0.5), 1), 0.49999, 0.2, 1.0, 0.0])
  for threshold in (0.5, 0.2):
    back = inference.uint16_to_probs(inference.probs_to_uint16(probs, threshold))
    np.testing.assert_array_equal(back > np.float32(threshold), probs > np.float32(threshold))
    assert np.max(np.abs(back - probs)) <= 1.5 / 65535


def test_another_models_output_is_not_overwritten(run_dir, predictor, odd_inputs):
  output = str(run_dir[0] / 'guarded')
  inputs = predict.find_inputs([str(odd_inputs[0] / 'grey16.png')])
  predict.run(predictor, inputs, output, show_progress=False)
  predict.run(predictor, inputs, output, show_progress=False)  # same model: fine
  other = inference.Predictor(predictor.model, description={'model': 'another'})
  with pytest.raises(FileExistsError, match='another model'):
    predict.run(other, inputs, output, show_progress=False)
  predict.run(other, inputs, output, overwrite=True, show_progress=False)
  assert json.load(open(os.path.join(output, 'predict.json')))['model'] == {'model': 'another'}


def test_official_layout_weights_predict_as_the_model(run_dir, predictor, odd_inputs, tmp_path):
  weights = str(tmp_path / 'unet.npz')
  np.savez(weights, **convert.to_torch(predictor.model))
  official = inference.Predictor.from_torch(
      'unet', weights, model_options={'base_channels': 4},
      mean=predictor.mean, std=predictor.std)
  assert official.description['source'] == 'torch'
  images = [odd_inputs[1]['grey16'], odd_inputs[1]['sub/rgb']]
  for mine, theirs in zip(predictor.predict(images), official.predict(images)):
    np.testing.assert_allclose(theirs, mine, rtol=1e-6, atol=1e-7)


def test_pth_weights_load_through_torch(predictor, odd_inputs, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is absent: pip install -e ".[torch]" '
                              'runs the .pth case (the .npz case above runs without it).')
  weights = str(tmp_path / 'unet.pth')
  torch.save({'state_dict': {k: torch.from_numpy(v)
                             for k, v in convert.to_torch(predictor.model).items()}}, weights)
  official = inference.Predictor.from_torch('unet', weights, model_options={'base_channels': 4},
                                            mean=predictor.mean, std=predictor.std)
  image = odd_inputs[1]['grey16']
  np.testing.assert_allclose(official.predict(image), predictor.predict(image), atol=1e-7)


def test_checkpoints_without_input_meta_use_the_workdirs_config(run_dir, predictor,
                                                                monkeypatch):
  """Checkpoints written before 'input' was stored fall back to config.json."""
  original = inference.checkpointing.Checkpoints.restore

  def restore_without_input(self, step, like):
    state, meta = original(self, step, like)
    return state, {k: v for k, v in meta.items() if k != 'input'}

  monkeypatch.setattr(inference.checkpointing.Checkpoints, 'restore', restore_without_input)
  _, settings = inference.load_workdir(run_dir[2], 'latest')
  assert (settings['mean'], settings['std'], settings['num_channels']) == (
      predictor.mean, predictor.std, predictor.num_channels)
  assert settings['description']['step'] >= predictor.description['step']


def test_evaluate_on_predictions_equals_eval_mode(run_dir, predictor):
  root, config, workdir = run_dir
  inputs = predict.find_inputs([str(root / 'split' / 'images')])
  output = str(root / 'out_npy')
  predict.run(predictor, inputs, output, prob_format='npy', outputs=('probs',),
              show_progress=False)
  expected = train.evaluate_checkpoint(config, workdir, checkpoint='best')
  masks = evaluate.dataset_masks('irstd_synthetic', 'test', data_dir=config.dataset.data_dir,
                                 **config.dataset.options)
  folder = evaluate.prediction_folder(output)
  exact = evaluate.evaluate(evaluate.index_files(folder, evaluate.PREDICTION_EXTENSIONS),
                            masks)['metrics']['default']
  for key in ('miou', 'niou', 'precision', 'recall', 'f1', 'pd', 'fa', 'auc'):
    assert exact[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
  for key in ('targets', 'matched_targets', 'fa_pixels', 'pixels', 'images'):
    assert exact[key] == expected[key], key
  np.testing.assert_allclose(exact['roc']['tpr'], expected['roc']['tpr'], rtol=1e-6)
  # The 16-bit PNGs give the thresholded metrics exactly, against mask files too.
  masks, suffix = evaluate.folder_masks(str(root / 'split' / 'masks'), list(masks))
  assert suffix == ''
  pngs = evaluate.index_files(os.path.join(root, 'out', 'probs'), ('.png',))
  result = evaluate.evaluate(pngs, masks)
  assert result['kind'] == 'probabilities'
  assert sorted(result['missing_masks']) == ['grey16', 'rgb']
  scored = result['metrics']['default']
  for key in ('miou', 'niou', 'f1', 'pd', 'fa'):
    assert scored[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
  assert set(result['metrics']) == {label for label, _ in evaluate.variants()}


def test_evaluate_lists_mismatches_and_reads_binary_masks(run_dir, tmp_path):
  masks_dir = run_dir[0] / 'split' / 'masks'
  names = sorted(p.stem for p in masks_dir.iterdir())
  preds = tmp_path / 'preds'
  preds.mkdir()
  for name in names[:-1]:
    mask = imageio.read_mask(masks_dir / f'{name}.png')
    PIL.Image.fromarray(mask * 255).save(preds / f'{name}.png')
  PIL.Image.fromarray(np.zeros((5, 5), np.uint8)).save(preds / 'stray.png')
  np.save(preds / f'{names[0]}_small.npy', np.zeros((3, 3), np.float32))
  masks, _ = evaluate.folder_masks(str(masks_dir), names, suffix='')
  result = evaluate.evaluate(evaluate.index_files(str(preds), evaluate.PREDICTION_EXTENSIONS),
                             masks)
  assert result['kind'] == 'binary' and result['images'] == len(names) - 1
  assert result['missing_predictions'] == [names[-1]]
  assert result['missing_masks'] == sorted(['stray', f'{names[0]}_small'])
  assert result['metrics']['default']['miou'] == pytest.approx(1.0)
  lines = evaluate.mismatch_lines(result)
  assert any(names[-1] in line for line in lines) and any('stray' in line for line in lines)


@pytest.mark.skipif(not video.available(), reason='PyAV is absent: pip install -e ".[video]" '
                    'runs the video case.')
def test_video_frames_masks_and_annotated_video(run_dir, predictor, tmp_path):
  path = str(tmp_path / 'clip.mp4')
  rng = np.random.default_rng(1)
  with video.VideoWriter(path, fps=10) as writer:
    for _ in range(5):
      frame = np.full((40, 56, 3), 40, np.uint8)
      y, x = rng.integers(5, 30, 2)
      frame[y:y + 3, x:x + 3] = 250
      writer.write(frame)
  assert len(list(video.read_frames(path))) == 5
  output = str(tmp_path / 'out')
  manifest = predict.run(predictor, predict.find_inputs([path]), output, show_progress=False)
  assert manifest['images'] == 5 and not manifest['failed']
  frames = list(video.read_frames(os.path.join(output, 'videos', 'clip.mp4')))
  assert len(frames) == 5 and frames[0].shape == (40, 56, 3)
  rows = read_csv(os.path.join(output, 'targets.csv'))
  for index in range(5):
    mask = np.asarray(PIL.Image.open(os.path.join(output, 'masks', 'clip', f'{index:06d}.png')))
    assert mask.shape == (40, 56)
    assert sum(r['frame'] == str(index) for r in rows) == len(
        inference.find_targets(mask, mask / 255.0))
  # A damaged video is reported by name and the run goes on.
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(open(path, 'rb').read()[:300])
  manifest = predict.run(predictor, predict.find_inputs([str(broken)]), str(tmp_path / 'o2'),
                         show_progress=False)
  assert [os.path.basename(f['path']) for f in manifest['failed']] == ['broken.mp4']


@pytest.mark.slow
def test_command_lines_exit_status_and_messages(run_dir, odd_inputs, tmp_path):
  root, _, workdir = run_dir
  env = dict(os.environ, PYTHONPATH=REPO, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  output = str(tmp_path / 'cli')
  run = lambda *args: subprocess.run([sys.executable, '-m', *args], env=env, cwd=str(tmp_path),
                                     capture_output=True, text=True, timeout=300)
  done = run('irstd_jax.predict', f'--workdir={workdir}', f'--input={root}/split/images/*.png',
             f'--input={odd_inputs[0]}', f'--output={output}')
  assert done.returncode == predict.EXIT_SOME_FAILED, done.stderr
  assert 'corrupt.png' in done.stderr and 'images/s' in done.stdout
  done = run('irstd_jax.evaluate', f'--predictions={output}', f'--masks={root}/split/masks')
  assert done.returncode == evaluate.EXIT_MISMATCHED, done.stderr  # grey16, rgb: no mask
  assert '| default |' in done.stdout and 'grey16' in done.stderr
  assert os.path.isfile(os.path.join(output, 'curves.png'))
  assert json.load(open(os.path.join(output, 'evaluation.json')))['images'] == 3
  done = run('irstd_jax.predict', '--model=ganet', f'--torch_weights={tmp_path}/no.pth',
             f'--input={odd_inputs[0]}', f'--output={output}')
  assert done.returncode == 1 and done.stderr.count('\n') <= 3
  assert 'No such --torch_weights file' in done.stderr


def test_a_workdir_predicts_with_its_final_evaluations_padding(run_dir, tmp_path):
  """`:cpu` draws its curve in buckets but scores the end per image: predict as the end."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(run_dir[2], workdir)
  config = json.loads((workdir / 'config.json').read_text())
  config['eval'].update(max_shapes=3, final_max_shapes=0)
  (workdir / 'config.json').write_text(json.dumps(config))
  assert inference.Predictor.from_workdir(str(workdir), 'latest').max_shapes == 0
  del config['eval']['final_max_shapes']  # A config.json written before the field.
  (workdir / 'config.json').write_text(json.dumps(config))
  assert inference.Predictor.from_workdir(str(workdir), 'latest').max_shapes == 3
