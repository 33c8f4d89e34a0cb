"""Shared test setup.

Four fake CPU devices so that sharding code is exercised on any machine; they
must be set before anything imports jax. Shared data (papers' fixtures, SIRST)
is found at ../shared relative to the repository root, never copied in.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=4'

# The commands turn on JAX's persistent compilation cache; tests count
# compilations, so it stays off unless a test turns it on (test_evaluation_cache).
os.environ['JAX_ENABLE_COMPILATION_CACHE'] = 'false'

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """../shared, or a skip saying why it is needed."""
  if not SHARED.is_dir():
    pytest.skip(f'{SHARED} is absent: it holds the reference fixtures and the '
                'SIRST dataset (present in the project workspace and CI).')
  return SHARED


def load_fixture(shared: pathlib.Path, name: str):
  """Loads ../shared/fixtures/<name> as a dict of numpy arrays, or skips."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = shared / 'fixtures' / name
  if not path.exists():
    pytest.skip(f'{path} is absent.')
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


# The slow tier: cases over ~8 s on a 2-core CPU (compiling a whole model's
# gradient or a training run). `python -m pytest -q -m "not slow"` skips them
# and still touches every module; the full suite (CI) runs them.
SLOW = (
    'test_kernels.py::test_jvp_through_model_on_the_plain_path',
    'test_kernels.py::test_model_option_overrides_the_switch',
    'test_mixed_precision.py::test_bfloat16_computes_in_bfloat16_and_keeps_float32_state',
    'test_gglnet.py::test_gradients',
    'test_ganet.py::test_gradients[plain]',
    'test_metrics.py::test_hundreds_of_components_and_255_masks',
    'test_metrics.py::test_full_hd_image',
    'test_metrics_variants.py::test_score_equals_pyirstdmetrics',
    'test_train.py::test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint',
    'test_gglnet.py::test_train_output_and_loss',
    'test_gglnet.py::test_ablation_runs',
    'test_gglnet.py::test_converter_round_trip',
    'test_gglnet.py::test_eval_output[plain]',
    'test_ganet.py::test_train_output_and_loss[plain]',
    'test_ganet.py::test_other_difference_ops_match_fixture',
    'test_ganet.py::test_eval_output[plain]',
    'test_ganet.py::test_batch_composition_non_square_and_padding',
    'test_main.py::test_main_mistakes_end_in_one_line',
    'test_train.py::test_two_processes_train_together',
    'test_train.py::test_one_and_four_devices_train_the_same_model',
    'test_train.py::test_mixed_size_evaluation_compiles_once_per_bucket',
    'test_train.py::test_trains_end_to_end_and_leaves_its_outputs',
    'test_train.py::test_eval_mode_reproduces_the_logged_best_metrics',
    'test_train.py::test_kill_mid_epoch_loses_at_most_the_checkpoint_interval',
    'test_train.py::test_interrupted_run_resumes_to_the_same_parameters',
    'test_train.py::test_refuses_to_resume_into_another_model',
    'test_train.py::test_save_model_makes_a_workdir_that_eval_predict_and_training_read',
    'test_train.py::test_a_split_of_parts_is_scored_per_part_and_over_all',
    'test_train.py::test_sirst3_run_logs_each_part_and_the_whole',
    'test_train.py::test_cpu_split_evaluation_and_precise_bn_leave_training_alone',
    'test_evaluate.py::test_found_targets_add_up_to_the_metrics_pd_on_random_maps',
    'test_predict.py::test_command_lines_exit_status_and_messages',
    'test_benchmarks.py::test_conv_layers_step_inventories_the_train_step',
    'test_benchmarks.py::test_run_command_smoke',
    'test_trajectory.py::test_trains_like_the_official_code',
    'test_sweep.py::test_quick_sweep_on_four_devices_survives_a_kill',
    'test_sweep.py::test_stacked_seeds_equal_their_solo_runs',
    'test_sweep.py::test_every_sweep_row_builds_its_model',
    'test_sweep.py::test_workers_split_the_units_and_the_table_reads_every_trial',
    'test_notebooks.py::test_notebook_runs_at_smoke_size',
)


# The longest files first: with `--dist loadfile` a file runs whole on one
# worker, so a long file handed out last leaves the other worker idle at the
# end (longest-first is the classic cure for that tail). The rest keep their
# order. Measured on a 2-core AMD EPYC: these files took 775, 797, 613, 166
# and 168 s, all files 3944 s, and the suite 2008 s, 36 s over an even split.
LONGEST_FILES = ('test_train.py', 'test_notebooks.py', 'test_sweep.py', 'test_ganet.py',
                 'test_gglnet.py')


def _file_rank(item) -> int:
  name = item.nodeid.split('tests/')[-1].split('::')[0]
  return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  for item in items:
    if any(item.nodeid.split('tests/')[-1].startswith(name) for name in SLOW):
      item.add_marker(pytest.mark.slow)
  items.sort(key=_file_rank)  # Stable: each file's own order is kept.
