"""TFDS builders: SIRST from ../shared, the others on folders made here.

Expected values come from the source files read independently (PIL + numpy
formulas), never from the builders' own helpers.
"""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from irstd_jax import datasets
from irstd_jax.datasets import catalog
from irstd_jax.datasets import nudt_sirst
from irstd_jax.datasets import sirst_v1

tfds.display_progress_bar(False)

SIRST_COUNTS = {'idx_427': {'train': 256, 'val': 85, 'test': 86,
                            'trainval': 341},
                'basicirstd': {'train': 213, 'test': 214}}


def _luma(rgb: np.ndarray) -> np.ndarray:
  rgb = rgb.astype(np.float64)
  return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _list_names(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


# -- SIRST-v1 from ../shared --------------------------------------------------


@pytest.fixture(scope='session')
def sirst(shared_dir, tmp_path_factory):
  """Both configs built once per session; the warnings raised on the way."""
  source = shared_dir / 'datasets' / 'sirst_v1'
  if not source.is_dir():
    pytest.skip(f'{source} is absent.')
  data_dir = tmp_path_factory.mktemp('tfds')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for config in SIRST_COUNTS:
      datasets.prepare('sirst_v1', source_dir=source, data_dir=data_dir,
                       config=config)
  return {'source': source, 'data_dir': data_dir, 'warnings': caught}


def _built_splits(name, **kwargs) -> set[str]:
  return set(datasets.builder(name, **kwargs).info.splits)


def test_sirst_v1_split_counts_and_order(sirst):
  for config, counts in SIRST_COUNTS.items():
    assert _built_splits('sirst_v1', data_dir=sirst['data_dir'],
                         config=config) == set(counts) == set(
                             catalog.get('sirst_v1').splits(config).names)
    for split, count in counts.items():
      source = datasets.load('sirst_v1', split, data_dir=sirst['data_dir'],
                             config=config)
      assert len(source) == count, (config, split)
  test = datasets.load('sirst_v1', 'test', data_dir=sirst['data_dir'])
  ids = [example['id'] for example in test]
  assert ids == _list_names(sirst['source'] / 'splits/idx_427/test.txt')
  basic = datasets.load('sirst_v1', 'train', data_dir=sirst['data_dir'],
                        config='basicirstd')
  assert [e['id'] for e in basic] == _list_names(
      sirst['source'] / 'splits/basicirstd_train.txt')


def test_sirst_v1_images_and_masks_match_source(sirst):
  everything = datasets.load('sirst_v1', 'trainval+test',
                             data_dir=sirst['data_dir'])
  assert len(everything) == 427
  for example in everything:
    name = example['id']
    raw = PIL.Image.open(sirst['source'] / 'images' / f'{name}.png')
    raw_mask = np.asarray(PIL.Image.open(
        sirst['source'] / 'masks' / f'{name}_pixels0.png'))
    image, mask = example['image'], example['mask']
    assert image.dtype == np.uint8 and mask.dtype == np.uint8
    assert image.shape == (raw.size[1], raw.size[0], 1), name
    assert mask.shape == image.shape, name
    assert set(np.unique(mask)) <= {0, 1}
    rgb = np.asarray(raw.convert('RGBA'))[..., :3]
    assert np.abs(image[..., 0] - _luma(rgb)).max() <= 1.0, name
    if name != 'Misc_111':
      assert int(mask.sum()) == int((raw_mask > 127).sum()), name
    count = example['num_targets']
    assert count == len(example['boxes']) >= (1 if mask.any() else 0)
    covered = np.zeros(mask.shape[:2], bool)
    for ymin, xmin, ymax, xmax in example['boxes']:
      covered[ymin:ymax, xmin:xmax] = True
      inside = mask[ymin:ymax, xmin:xmax, 0]
      # Tight boxes: target pixels on all four edges.
      assert inside[0].any() and inside[-1].any()
      assert inside[:, 0].any() and inside[:, -1].any()
    assert not (mask[..., 0].astype(bool) & ~covered).any()


def test_misc_111_mask_resized_with_warning(sirst):
  messages = [str(w.message) for w in sirst['warnings']
              if issubclass(w.category, datasets.DatasetWarning)]
  assert any('Misc_111' in m and '592x400' in m for m in messages), messages
  test = datasets.load('sirst_v1', 'trainval+test', data_dir=sirst['data_dir'])
  assert test.resized_masks == ['Misc_111']
  example = next(e for e in test if e['id'] == 'Misc_111')
  assert example['mask'].shape == (220, 325, 1)
  # The resized target sits in the box of the dataset's own annotation
  # (masks/Misc_111.xml: x 144..151, y 114..119), within a pixel.
  rows, cols = np.nonzero(example['mask'][..., 0])
  assert rows.min() >= 113 and rows.max() <= 120
  assert cols.min() >= 143 and cols.max() <= 152
  raw = np.asarray(PIL.Image.open(
      sirst['source'] / 'masks' / 'Misc_111_pixels0.png')) > 127
  scale = (220 * 325) / (400 * 592)
  assert abs(example['mask'].sum() - raw.sum() * scale) <= 0.3 * raw.sum() * scale


def test_sirst_v1_readable_through_tfds_and_stats(sirst):
  source = tfds.data_source('sirst_v1/basicirstd', split='test',
                            data_dir=str(sirst['data_dir']))
  assert len(source) == 214
  example = source[0]
  assert example['image'].shape[-1] == 1
  loaded = datasets.load('sirst_v1', 'test', data_dir=sirst['data_dir'])
  # Dataset statistics over all 427 images, each once, by the grey rule.
  means, stds = [], []
  for path in sorted((sirst['source'] / 'images').glob('*.png')):
    grey = _luma(np.asarray(PIL.Image.open(path).convert('RGBA'))[..., :3])
    means.append(np.round(grey).mean())
    stds.append(np.round(grey).std())
  np.testing.assert_allclose(loaded.mean_std, (np.mean(means), np.mean(stds)),
                             rtol=2e-3)


def test_unknown_split_and_dataset_errors(sirst):
  with pytest.raises(ValueError, match=r"no split \['validation'\].*'test'"):
    datasets.load('sirst_v1', 'validation', data_dir=sirst['data_dir'])
  with pytest.raises(ValueError, match='Unknown dataset'):
    datasets.load('sirst_v3', 'train', data_dir=sirst['data_dir'])


# -- Folders in the published layouts ------------------------------------------


def _scene(rng, height, width, targets=2):
  image = rng.integers(20, 120, (height, width), dtype=np.uint8)
  mask = np.zeros((height, width), np.uint8)
  for _ in range(targets):
    y, x = rng.integers(2, height - 6), rng.integers(2, width - 6)
    size = int(rng.integers(1, 4))
    mask[y:y + size, x:x + size] = 255
    image[y:y + size, x:x + size] = 250
  return image, mask


def _write_pair(rng, image_path, mask_path, height=64, width=80):
  image, mask = _scene(rng, height, width)
  image_path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(image).save(image_path)
  if mask_path is not None:
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(mask).save(mask_path)
  return image, mask


def _write_list(path, names, newline='\n'):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(newline.join(names).encode())


def test_nudt_sirst_layouts(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'NUDT-SIRST'
  names = [f'{i:06d}' for i in range(1, 9)]
  truth = {}
  for name in names:
    truth[name] = _write_pair(rng, root / 'images' / f'{name}.png',
                              root / 'masks' / f'{name}.png', 48, 48)
  _write_list(root / '50_50' / 'train.txt', names[:5], '\r\n')
  _write_list(root / '50_50' / 'test.txt', names[5:], '\r\n')
  _write_list(root / 'img_idx' / 'train_NUDT-SIRST.txt', names[::2])
  _write_list(root / 'img_idx' / 'test_NUDT-SIRST.txt', names[1::2])
  data_dir = tmp_path / 'tfds'
  train = datasets.load('nudt_sirst', 'train', source_dir=root,
                        data_dir=data_dir)
  assert [e['id'] for e in train] == names[:5]
  for example in train:
    image, mask = truth[example['id']]
    np.testing.assert_array_equal(example['image'][..., 0], image)
    np.testing.assert_array_equal(example['mask'][..., 0], mask // 255)
  assert len(datasets.load('nudt_sirst', 'test', data_dir=data_dir)) == 3
  basic = datasets.load('nudt_sirst', 'test', source_dir=root,
                        data_dir=data_dir, config='basicirstd')
  assert [e['id'] for e in basic] == names[1::2]
  nudt = catalog.get('nudt_sirst')
  assert _built_splits('nudt_sirst', data_dir=data_dir) == set(
      nudt.splits().names)
  assert _built_splits('nudt_sirst', data_dir=data_dir,
                       config='basicirstd') == set(
                           nudt.splits('basicirstd').names)
  with pytest.raises(ValueError, match=r'no split lists in .*70_30.*50_50'):
    datasets.load('nudt_sirst', 'train', source_dir=root, data_dir=data_dir,
                  config='70_30')


def test_irstd_1k_layouts(tmp_path):
  rng = np.random.default_rng(1)
  official, basic = tmp_path / 'IRSTD-1k', tmp_path / 'basic'
  names = [f'XDU{i}' for i in range(6)]
  for name in names:
    _write_pair(rng, official / 'IRSTD1k_Img' / f'{name}.png',
                official / 'IRSTD1k_Label' / f'{name}.png', 32, 32)
    _write_pair(rng, basic / 'images' / f'{name}.png',
                basic / 'masks' / f'{name}.png', 32, 32)
  _write_list(official / 'trainval.txt', names[:4])
  _write_list(official / 'test.txt', names[4:])
  _write_list(basic / 'img_idx' / 'train_IRSTD-1K.txt', names[:3])
  _write_list(basic / 'img_idx' / 'test_IRSTD-1K.txt', names[3:])
  first = datasets.load('irstd_1k', 'trainval', source_dir=official,
                        data_dir=tmp_path / 'a')
  assert [e['id'] for e in first] == names[:4]
  second = datasets.load('irstd_1k', 'test', source_dir=basic,
                         data_dir=tmp_path / 'b')
  assert [e['id'] for e in second] == names[3:]
  for data_dir in ('a', 'b'):
    assert _built_splits('irstd_1k', data_dir=tmp_path / data_dir) == set(
        catalog.get('irstd_1k').splits().names)


def test_sirst_v2_layout(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / 'open-sirst-v2'
  masks = root / 'annotations' / 'masks'
  _write_pair(rng, root / 'images/targets/Misc_1.png', masks / 'Misc_1_pixels0.png')
  _write_pair(rng, root / 'images/targets/S20210303_S7_1.png',
              masks / 'S20210303_S7_1_pixels0.png')
  _write_pair(rng, root / 'images/backgrounds/S1_1.png', None)
  _, with_target = _write_pair(rng, root / 'images/backgrounds/211_HD_1.png',
                               masks / '211_HD_1_pixels0.png')
  _write_list(root / 'splits' / 'trainval_full.txt',
              ['Misc_1', 'S1_1', '211_HD_1'])
  _write_list(root / 'splits' / 'test_full.txt', ['S20210303_S7_1'])
  _write_list(root / 'splits' / 'mini-v2background.txt', ['S1_1'])
  data_dir = tmp_path / 'tfds'
  train = datasets.load('sirst_v2', 'trainval_full', source_dir=root,
                        data_dir=data_dir)
  by_id = {e['id']: e for e in train}
  assert list(by_id) == ['Misc_1', 'S1_1', '211_HD_1']
  assert by_id['S1_1']['mask'].sum() == 0 and by_id['S1_1']['num_targets'] == 0
  assert by_id['211_HD_1']['mask'].sum() == (with_target > 0).sum()
  assert len(datasets.load('sirst_v2', 'mini_v2background',
                           data_dir=data_dir)) == 1
  # A target image without a mask is an error, not an empty mask.
  (masks / 'Misc_1_pixels0.png').unlink()
  with pytest.raises(ValueError, match=r'No mask for image .*Misc_1\.png'):
    datasets.load('sirst_v2', 'test_full', source_dir=root,
                  data_dir=tmp_path / 'other')


def _mixed_folder(root: pathlib.Path):
  """A folder no builder has seen: mixed modes and sizes up to 1920x1080.

  Returns {name: (expected grey, expected mask)} computed with numpy.
  """
  rng = np.random.default_rng(3)
  expected = {}
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()

  def save_mask(name, mask, mode='L'):
    if mode == 'RGB':  # A red-on-black colour mask.
      rgb = np.zeros(mask.shape + (3,), np.uint8)
      rgb[..., 0] = mask
      PIL.Image.fromarray(rgb).save(root / 'masks' / f'{name}_pixels0.png')
    else:
      PIL.Image.fromarray(mask).save(root / 'masks' / f'{name}_pixels0.png')

  # RGB 1920x1080, colourful.
  rgb = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
  _, mask = _scene(rng, 1080, 1920)
  PIL.Image.fromarray(rgb).save(root / 'images' / 'big_rgb.png')
  save_mask('big_rgb', mask, 'RGB')
  expected['big_rgb'] = (_luma(rgb), mask > 0)
  # RGBA with a random alpha: alpha is ignored.
  rgba = rng.integers(0, 256, (512, 640, 4), dtype=np.uint8)
  _, mask = _scene(rng, 512, 640)
  PIL.Image.fromarray(rgba, 'RGBA').save(root / 'images' / 'alpha.png')
  save_mask('alpha', mask)
  expected['alpha'] = (_luma(rgba[..., :3]), mask > 0)
  # Palette.
  palette_rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
  paletted = PIL.Image.fromarray(palette_rgb).quantize(colors=16)
  paletted.save(root / 'images' / 'palette.png')
  _, mask = _scene(rng, 240, 320)
  save_mask('palette', (mask > 0).astype(np.uint8))  # {0, 1} mask file.
  lut = np.array(paletted.getpalette()[:48]).reshape(16, 3)
  expected['palette'] = (_luma(lut[np.asarray(paletted)]), mask > 0)
  # Grayscale.
  grey, mask = _scene(rng, 256, 256)
  PIL.Image.fromarray(grey).save(root / 'images' / 'grey.png')
  save_mask('grey', mask)
  expected['grey'] = (grey.astype(np.float64), mask > 0)
  # 16-bit grayscale, 14-bit values: stretched min..max to 0..255.
  sixteen = rng.integers(3000, 9000, (720, 1280)).astype(np.uint16)
  _, mask = _scene(rng, 720, 1280)
  PIL.Image.fromarray(sixteen).save(root / 'images' / 'sixteen.png')
  save_mask('sixteen', mask)
  low, high = float(sixteen.min()), float(sixteen.max())
  expected['sixteen'] = ((sixteen - low) * 255.0 / (high - low), mask > 0)
  return expected


def test_irstd_folder_mixed_modes_and_sizes(tmp_path):
  root = tmp_path / 'never_seen'
  expected = _mixed_folder(root)
  source = datasets.load('irstd_folder', 'train', source_dir=root,
                         data_dir=tmp_path / 'tfds')
  assert sorted(e['id'] for e in source) == sorted(expected)
  for example in source:
    grey, mask = expected[example['id']]
    assert example['image'].shape == grey.shape + (1,)
    assert np.abs(example['image'][..., 0] - grey).max() <= 1.0, example['id']
    np.testing.assert_array_equal(example['mask'][..., 0], mask)
  # Split lists: their splits replace the single 'train'; editing the folder
  # gives a new config (a rebuild), so the old build is never served stale.
  _write_list(root / 'img_idx' / 'train.txt', ['big_rgb', 'grey.png', 'alpha'])
  _write_list(root / 'img_idx' / 'test.txt', ['palette', 'sixteen'])
  test = datasets.load('irstd_folder', 'test', source_dir=root,
                       data_dir=tmp_path / 'tfds')
  assert [e['id'] for e in test] == ['palette', 'sixteen']
  assert test.config != source.config


def test_bad_input_errors_name_file_and_fix(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / 'bad'
  for name in ('a', 'b'):
    _write_pair(rng, root / 'images' / f'{name}.png',
                root / 'masks' / f'{name}.png')
  _write_pair(rng, root / 'images' / 'lonely.png', None)
  with pytest.raises(ValueError,
                     match=r'No mask for image .*lonely\.png.*Fix:'):
    datasets.load('irstd_folder', 'train', source_dir=root,
                  data_dir=tmp_path / 'tfds')
  (root / 'images' / 'lonely.png').unlink()

  _write_list(root / 'img_idx' / 'train.txt', ['a', 'ghost'])
  _write_list(root / 'img_idx' / 'test.txt', ['b'])
  with pytest.raises(ValueError, match=r"train\.txt names 1 image.*'ghost' "
                     r'\(line 2\).*Fix:'):
    datasets.load('irstd_folder', 'train', source_dir=root,
                  data_dir=tmp_path / 'tfds')
  _write_list(root / 'img_idx' / 'train.txt', ['a'])

  # A file that is no image fails mid-build: nothing complete-looking stays.
  (root / 'images' / 'b.png').write_bytes(b'this is not a png')
  data_dir = tmp_path / 'tfds_broken'
  with pytest.raises(ValueError, match=r'Cannot read image .*b\.png.*Fix:'):
    datasets.load('irstd_folder', 'train', source_dir=root, data_dir=data_dir)
  leftovers = [p for p in data_dir.rglob('*') if p.is_file()]
  assert not [p for p in leftovers if p.name in ('dataset_info.json',
                                                 'features.json')], leftovers
  assert not any('array_record' in p.name for p in leftovers), leftovers
  assert not datasets.builder('irstd_folder', source_dir=root,
                              data_dir=data_dir).is_prepared()


# -- Synthetic ------------------------------------------------------------------


SMALL_SYNTHETIC = dict(num_train=6, num_test=2, min_size=64, max_size=96)


def test_irstd_synthetic_deterministic(tmp_path):
  def arrays(seed, data_dir):
    source = datasets.load('irstd_synthetic', 'train', data_dir=data_dir,
                           seed=seed, **SMALL_SYNTHETIC)
    return [(e['id'], e['image'], e['mask'], e['num_targets']) for e in source]

  first = arrays(0, tmp_path / 'a')
  again = arrays(0, tmp_path / 'b')
  other = arrays(1, tmp_path / 'a')
  assert len(first) == 6
  for (i1, x1, m1, _), (i2, x2, m2, _) in zip(first, again):
    assert i1 == i2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(m1, m2)
  assert any(x1.shape != x2.shape or not np.array_equal(x1, x2)
             for (_, x1, _, _), (_, x2, _, _) in zip(first, other))
  for _, image, mask, count in first:
    assert 64 <= image.shape[0] <= 96 and 64 <= image.shape[1] <= 96
    assert 1 <= count <= 4
    # Targets are small: 1 to ~80 pixels each.
    assert 1 <= mask.sum() <= 100 * count
  test = datasets.load('irstd_synthetic', 'test', data_dir=tmp_path / 'a',
                       seed=0, **SMALL_SYNTHETIC)
  assert len(test) == 2
  assert _built_splits('irstd_synthetic', data_dir=tmp_path / 'a', seed=0,
                       **SMALL_SYNTHETIC) == set(
                           catalog.get('irstd_synthetic').splits().names)


def test_catalog_has_every_builder_and_its_named_configs():
  assert sorted(catalog.DATASETS) == sorted(datasets.names())
  for cls in (sirst_v1.SirstV1, nudt_sirst.NudtSirst):
    entry = catalog.get(cls.name)
    assert list(entry.configs) == [c.name for c in cls.BUILDER_CONFIGS]
    assert entry.splits() == entry.splits(cls.BUILDER_CONFIGS[0].name)
  for entry in catalog.DATASETS.values():
    for splits in [entry.splits(), *entry.configs.values()]:
      assert splits.names is None or {splits.train, splits.test} <= set(
          splits.names)
  assert catalog.get('NUAA-SIRST') is catalog.get('sirst_v1')
  assert catalog.canonical('IRSTD1k') == 'irstd_1k'
  assert catalog.find('sirst_v3') is None
  with pytest.raises(ValueError, match='Unknown dataset'):
    catalog.get('sirst_v3')
  # A config made from options: default names, splits known once built.
  assert catalog.get('nudt_sirst').splits('split_my_lists') == catalog.Splits(
      'train', 'test', None)


def test_data_dir_default_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / 'env_dir'))
  builder = datasets.builder('irstd_synthetic', **SMALL_SYNTHETIC)
  assert str(builder.data_dir).startswith(str(tmp_path / 'env_dir'))


# -- No TensorFlow anywhere ------------------------------------------------------


_NO_TF_SCRIPT = r'''
import json, sys
def tf_modules():
  return sorted(m for m in sys.modules
                if m == 'tensorflow' or m.startswith('tensorflow.'))
import irstd_jax
after_import = tf_modules()
from irstd_jax import datasets, input_pipeline, recipes
cases = json.loads(sys.argv[1])
for name, split, kwargs in cases:
  source = datasets.load(name, split, **kwargs)
  source[0]
  list(source)
  spec = recipes.resolve('basicirstd', name, train_source=source)
  next(input_pipeline.eval_batches(source, batch_size=2, resolution='native',
                                   num_channels=1, mean_std=spec.mean_std))
  spec = recipes.resolve('gglnet', name, image_size=32)
  next(input_pipeline.train_iterator(source, recipe='gglnet', batch_size=2,
                                     seed=0, size=spec.train_size,
                                     num_channels=spec.num_channels,
                                     mean_std=spec.mean_std, process_index=0,
                                     process_count=1))
print(json.dumps({'after_import': after_import, 'after_all': tf_modules()}))
'''


def test_no_tensorflow_imported(tmp_path, sirst):
  rng = np.random.default_rng(5)
  nudt, one_k, v2, folder = (tmp_path / n for n in ('nudt', '1k', 'v2', 'f'))
  for name in ('000001', '000002'):
    _write_pair(rng, nudt / 'images' / f'{name}.png', nudt / 'masks' / f'{name}.png')
    _write_pair(rng, one_k / 'IRSTD1k_Img' / f'{name}.png',
                one_k / 'IRSTD1k_Label' / f'{name}.png')
    _write_pair(rng, v2 / 'images' / 'targets' / f'{name}.png',
                v2 / 'annotations' / 'masks' / f'{name}_pixels0.png')
    _write_pair(rng, folder / 'images' / f'{name}.png',
                folder / 'masks' / f'{name}.png')
  _write_list(nudt / '50_50' / 'train.txt', ['000001', '000002'])
  _write_list(one_k / 'trainval.txt', ['000001', '000002'])
  _write_list(one_k / 'test.txt', ['000002'])
  _write_list(v2 / 'splits' / 'trainval_full.txt', ['000001', '000002'])
  data_dir = str(tmp_path / 'tfds')
  cases = [
      ('sirst_v1', 'test', {'data_dir': str(sirst['data_dir'])}),
      ('nudt_sirst', 'train', {'source_dir': str(nudt), 'data_dir': data_dir}),
      ('irstd_1k', 'trainval', {'source_dir': str(one_k),
                                'data_dir': data_dir}),
      ('sirst_v2', 'trainval_full', {'source_dir': str(v2),
                                     'data_dir': data_dir}),
      ('irstd_folder', 'train', {'source_dir': str(folder),
                                 'data_dir': data_dir}),
      ('irstd_synthetic', 'train', dict(data_dir=data_dir, num_train=2,
                                        num_test=1, min_size=32, max_size=48)),
  ]
  result = subprocess.run(
      [sys.executable, '-c', _NO_TF_SCRIPT, json.dumps(cases)],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  modules = json.loads(result.stdout.strip().splitlines()[-1])
  assert modules == {'after_import': [], 'after_all': []}


def test_training_imports_no_tfds():
  """The input side and the trainer import without tensorflow_datasets (the
  builders load on first use of a TFDS-backed name of `irstd_jax.datasets`)."""
  script = (
      'import sys\n'
      'import irstd_jax.datasets, irstd_jax.datasets.catalog\n'
      'import irstd_jax.input_pipeline, irstd_jax.recipes, irstd_jax.train\n'
      "assert 'tensorflow_datasets' not in sys.modules\n"
      'from irstd_jax import datasets\n'
      "assert 'irstd_synthetic' in datasets.names()\n"
      "assert 'tensorflow_datasets' in sys.modules\n")
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]


# -- SIRST-v1 download path (a local HTTP server stands in for GitHub) ----------


@pytest.fixture
def http_root(tmp_path):
  import functools  # pylint: disable=g-import-not-at-top
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  served = tmp_path / 'served'
  served.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(served))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield served, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()


def test_sirst_v1_download_and_unpack(tmp_path, http_root, monkeypatch):
  import zipfile  # pylint: disable=g-import-not-at-top
  served, url = http_root
  rng = np.random.default_rng(6)
  names = [f'Misc_{i}' for i in range(1, 7)]
  with zipfile.ZipFile(served / 'images.zip', 'w') as images, \
       zipfile.ZipFile(served / 'masks.zip', 'w') as masks:
    for name in names:
      pair = _write_pair(rng, tmp_path / 'raw' / f'{name}.png',
                         tmp_path / 'raw' / f'{name}_pixels0.png')
      del pair
      images.write(tmp_path / 'raw' / f'{name}.png', f'images/{name}.png')
      masks.write(tmp_path / 'raw' / f'{name}_pixels0.png',
                  f'masks/{name}_pixels0.png')
      masks.writestr(f'__MACOSX/masks/._{name}_pixels0.png', b'junk')
    masks.writestr('masks/.DS_Store', b'junk')
  lists = {'idx_427/train': names[:3], 'idx_427/val': names[3:4],
           'idx_427/test': names[4:], 'idx_427/trainval': names[:4],
           'basicirstd/train': names[::2], 'basicirstd/test': names[1::2]}
  urls = {'images': f'{url}/images.zip', 'masks': f'{url}/masks.zip'}
  for key, content in lists.items():
    _write_list(served / f'{key.replace("/", "_")}.txt', content, '\r\n')
    urls[key] = f'{url}/{key.replace("/", "_")}.txt'
  monkeypatch.setattr(sirst_v1, 'URLS', urls)
  monkeypatch.chdir(tmp_path)  # No ./datasets/sirst_v1 to find.
  test = datasets.load('sirst_v1', 'test', data_dir=tmp_path / 'tfds')
  assert [e['id'] for e in test] == names[4:]
  # A local copy without the BasicIRSTD lists fetches only the lists.
  local = tmp_path / 'local'
  (local / 'images').mkdir(parents=True)
  (local / 'masks').mkdir()
  for name in names:
    (local / 'images' / f'{name}.png').write_bytes(
        (tmp_path / 'raw' / f'{name}.png').read_bytes())
    (local / 'masks' / f'{name}_pixels0.png').write_bytes(
        (tmp_path / 'raw' / f'{name}_pixels0.png').read_bytes())
  (served / 'images.zip').unlink()  # Must not be needed.
  train = datasets.load('sirst_v1', 'train', source_dir=local,
                        data_dir=tmp_path / 'tfds', config='basicirstd')
  assert [e['id'] for e in train] == names[::2]


def test_sirst_v1_offline_without_copy_fails_fast(tmp_path, monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  with socket.socket() as probe:  # A port nobody listens on.
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  monkeypatch.setattr(sirst_v1, 'URLS', {
      key: f'http://127.0.0.1:{port}/{key}' for key in sirst_v1.URLS})
  monkeypatch.chdir(tmp_path)
  start = time.monotonic()
  with pytest.raises(ValueError, match=r'no local copy .* download failed.*'
                     r'Fix: pass source_dir='):
    datasets.load('sirst_v1', 'test', data_dir=tmp_path / 'tfds')
  assert time.monotonic() - start < 30  # TFDS alone retries for minutes.


# -- SIRST3: three parts in one folder ------------------------------------------


def _sirst3_parts(root: pathlib.Path, rng, with_parts=('nuaa', 'nudt', 'irstd')):
  """Fake parts in BasicIRSTD's datasets/ layout (NUDT in DNANet's 50_50 form)."""
  names = {'nuaa': [f'Misc_{i}' for i in (3, 1, 7, 2, 5)],
           'nudt': [f'{i:06d}' for i in range(1, 7)],
           'irstd': [f'XDU{i}' for i in range(4)]}
  truth = {}
  if 'nuaa' in with_parts:
    part = root / 'NUAA-SIRST'
    for i, name in enumerate(names['nuaa']):
      truth[name] = _write_pair(rng, part / 'images' / f'{name}.png',
                                part / 'masks' / f'{name}.png', 40 + 8 * i, 56)
    _write_list(part / 'img_idx' / 'train_NUAA-SIRST.txt', names['nuaa'][:2])
    _write_list(part / 'img_idx' / 'test_NUAA-SIRST.txt', names['nuaa'][2:])
  if 'nudt' in with_parts:
    part = root / 'NUDT-SIRST'
    for name in names['nudt']:
      truth[name] = _write_pair(rng, part / 'images' / f'{name}.png',
                                part / 'masks' / f'{name}.png', 32, 32)
    _write_list(part / '50_50' / 'train.txt', names['nudt'][:4])
    _write_list(part / '50_50' / 'test.txt', names['nudt'][4:])
  if 'irstd' in with_parts:
    part = root / 'IRSTD-1K'
    for name in names['irstd']:
      truth[name] = _write_pair(rng, part / 'IRSTD1k_Img' / f'{name}.png',
                                part / 'IRSTD1k_Label' / f'{name}.png', 48, 48)
    _write_list(part / 'trainval.txt', names['irstd'][:1])
    _write_list(part / 'test.txt', names['irstd'][1:])
  return names, truth


def test_sirst3_merges_its_parts_and_knows_them(tmp_path):
  names, truth = _sirst3_parts(tmp_path / 'datasets', np.random.default_rng(5))
  data_dir = tmp_path / 'tfds'
  test = datasets.load('sirst3', 'test', source_dir=tmp_path / 'datasets', data_dir=data_dir)
  train = datasets.load('sirst3', 'train', data_dir=data_dir)  # Built once.
  # Part by part, each in its own list order: NUAA, NUDT, IRSTD-1k.
  assert [e['id'] for e in test] == names['nuaa'][2:] + names['nudt'][4:] + names['irstd'][1:]
  assert [e['id'] for e in train] == names['nuaa'][:2] + names['nudt'][:4] + names['irstd'][:1]
  assert list(test.parts) == ['nuaa_sirst', 'nudt_sirst', 'irstd_1k']
  assert [len(p) for p in test.parts.values()] == [3, 2, 3]
  assert [len(p) for p in train.parts.values()] == [2, 4, 1]
  nudt = test.parts['nudt_sirst']
  assert nudt.split == 'test/nudt_sirst' and [e['id'] for e in nudt] == names['nudt'][4:]
  assert nudt[-1]['id'] == names['nudt'][-1] and [e['id'] for e in nudt[:1]] == names['nudt'][4:5]
  for example in test.parts['irstd_1k']:
    image, mask = truth[example['id']]
    np.testing.assert_array_equal(example['image'][..., 0], image)
    np.testing.assert_array_equal(example['mask'][..., 0], mask // 255)
  assert _built_splits('sirst3', data_dir=data_dir) == set(catalog.get('sirst3').splits().names)
  # A split expression is one source without parts.
  assert datasets.load('sirst3', 'test[:2]', data_dir=data_dir).parts == {}
  assert catalog.get('SIRST-3').parts == tuple(test.parts)


def test_sirst3_names_each_missing_part_and_where_it_goes(tmp_path):
  root = tmp_path / 'datasets'
  _sirst3_parts(root, np.random.default_rng(6), with_parts=('nuaa',))
  with pytest.raises(ValueError) as error:
    datasets.load('sirst3', 'test', source_dir=root, data_dir=tmp_path / 'tfds')
  message = str(error.value)
  assert '2 of its 3 parts not found' in message
  assert f'NUDT-SIRST (part nudt_sirst): put it at {root}/NUDT-SIRST' in message
  assert f'IRSTD-1k (part irstd_1k): put it at {root}/IRSTD-1K' in message
  assert 'NUAA' not in message.split('not found')[1].split('Fix')[0]
  assert 'source_dir' in message


def test_sirst3_without_source_dir_points_at_datasets(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No ./datasets here.
  with pytest.raises(ValueError, match=r'(?s)3 of its 3 parts not found \(no source_dir given\)'
                                       r'.*put it at datasets/NUAA-SIRST'):
    datasets.load('sirst3', 'train', data_dir=tmp_path / 'tfds')
