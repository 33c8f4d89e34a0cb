"""Sweeps: a paper's table as many training runs, with seeds, on every device.

`spec` says what a sweep is (sweep files in configs/sweeps/), `runner` runs
the trials (stacked seeds, concurrent slots, worker shares, resume) and
`table` prints the table. The command is `python -m irstd_jax.sweep`.
"""

from irstd_jax.sweeps import runner
from irstd_jax.sweeps import spec
from irstd_jax.sweeps import table
