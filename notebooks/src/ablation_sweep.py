# %% [markdown]
# # Ablation sweep: a paper's table with seeds and error bars
#
# GaNet's Table II asks what GradFormer and GFEM add to a U-Net. The paper
# reports one run per row; here every row is trained with several seeds and
# the table shows mean ± standard deviation, with the paper's number beside
# ours. On a GPU or TPU a row's seeds train stacked as one program
# (`jax.vmap` over the model states; on a CPU, where that measured slower,
# one after another), and runs go to every device at once. The same runs
# come from the command line:
#
#     python -m irstd_jax.sweep --sweep=configs/sweeps/ganet_table2.py:quick --workdir=workdirs/table2_quick

# %% [markdown]
# ## Parameters
#
# `IRSTD_NOTEBOOK_SMOKE=1` (the tests) runs one row, two seeds and a few
# steps. Otherwise the `:quick` table (four rows, three seeds, the quick
# config's synthetic scenes; 21 minutes measured on two loaded CPU cores). On an
# accelerator, set `PAPER = True` for the paper's protocol on NUDT-SIRST
# (`SOURCE_DIR`: the unpacked dataset; hours on one GPU).

# %% tags=["parameters"]
import os
import pathlib

import irstd_jax

SMOKE = os.environ.get('IRSTD_NOTEBOOK_SMOKE') == '1'
PAPER = False
SOURCE_DIR = None  # e.g. '/content/NUDT-SIRST' when PAPER
REPO = pathlib.Path(irstd_jax.__file__).resolve().parents[1]
WORK = pathlib.Path(os.environ.get('IRSTD_NOTEBOOK_WORKDIR') or REPO / 'workdirs' / 'notebooks')

if SMOKE:
  SWEEP_ARG, SETTINGS = 'quick,rows=1,seeds=2,epochs=1', {
      'dataset.options.num_train': 8, 'dataset.options.num_test': 4}
elif PAPER:
  SWEEP_ARG, SETTINGS = '', {'dataset.source_dir': SOURCE_DIR}
else:
  SWEEP_ARG, SETTINGS = 'quick', {}
WORKDIR = WORK / ('table2_smoke' if SMOKE else 'table2_paper' if PAPER else 'table2_quick')

# %% [markdown]
# ## The sweep file
#
# `configs/sweeps/ganet_table2.py` is plain Python: a base config (GaNet's),
# named rows of config fields, seeds and the paper's numbers.

# %%
from irstd_jax.sweeps import spec

sweep = spec.load(f'{REPO}/configs/sweeps/ganet_table2.py:{SWEEP_ARG}')
if SETTINGS:
  sweep.base = spec.set_fields(sweep.base, SETTINGS, 'notebook settings')
print(sweep.title, '- seeds', sweep.seeds)
for row in sweep.rows:
  print(f'  {row.name:36s} {row.fields}')

# %% [markdown]
# ## Run it
#
# Every (row, seed) is an ordinary training run in `WORKDIR/<row>/seed_<seed>`.
# Run the cell again after an interruption: finished trials are kept,
# interrupted ones resume from their checkpoints. Each row's training output
# goes to its `console.log`; the bar counts trials.

# %%
import jax

from irstd_jax.sweeps import runner

print(f'{jax.device_count()} device(s): up to {jax.device_count()} runs at once')
failed = runner.run(sweep, str(WORKDIR))
print('failed:', failed or 'none')

# %% [markdown]
# ## The table
#
# Final epoch and best epoch (chosen on the test split, what the paper
# reports), each cell mean ± sample standard deviation over the seeds.

# %%
from IPython.display import Image, Markdown, display

from irstd_jax.sweeps import table

paths = table.write(sweep, str(WORKDIR))
display(Markdown(pathlib.Path(paths[0]).read_text()))

# %% [markdown]
# `table.png` holds each row's ROC (final epoch, mean over seeds) and the mIoU
# bars with their error bars; the paper's values are the red markers (on
# NUDT-SIRST, so only comparable with `PAPER = True`).

# %%
display(Image(paths[2]))

# %% [markdown]
# ## The seeds one by one
#
# The spread is the point: with one seed per row a difference between rows can
# be noise. Each dot is one seed's final mIoU.

# %%
import matplotlib.pyplot as plt
import numpy as np

records = table.collect(sweep, str(WORKDIR))
fig, ax = plt.subplots(figsize=(7, 3.2))
for i, (name, trials) in enumerate(records.items()):
  values = [100 * t['final']['metrics']['miou'] for t in trials]
  ax.scatter([i] * len(values), values, color='#1f77b4')
  if values:
    ax.errorbar(i + 0.15, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                fmt='o', color='black', capsize=4)
ax.set_xticks(range(len(records)), list(records), rotation=15, ha='right', fontsize=8)
ax.set_ylabel('final mIoU (%)')
ax.set_title('each seed (blue) and mean ± std (black)')
fig.tight_layout()
plt.show()
