"""IRSTD metrics in jax.numpy, equal to the reference codes.

mIoU, nIoU, precision / recall / F1, Pd / Fa (BasicIRSTD), ROC (DNANet) and a
Pd-Fa curve, computed jitted and batched; and the target-level variants papers
use under the same names (`variants`: the shooting rule, OPDC matching, hIoU
and its error terms, equal to pyirstdmetrics). Two ways in:

* Streaming, for a model being evaluated: `stats = init()`, then
  `stats = update(stats, probs, masks, valid)` per (B, H, W) batch (pure,
  jittable), `merge` across devices or hosts, `compute(stats)` at the end.
  The variants need an assignment on the host: `variants.init / update /
  merge`, then `compute(stats, variant_stats)`.
* `score(preds, masks)`: a whole set of 2-D maps of any sizes on the host,
  for predictions made by anything (variants included by default).

`explain(pred, mask)` shows what the counts stand for on one image: which
targets each Pd / Fa rule counts as detected, which pixels as false alarms.

A pixel is predicted when its probability is strictly greater than the
threshold (float32 comparison), and is a target pixel when its mask value is
> 0.5 (masks in {0, 1} or {0, 255}).

Modules: `streaming`, `sets`, `variants` and `explanation` are the entries; `batch`
(per-batch sufficient statistics), `components` (connected components of
sparse maps), `matching` (BasicIRSTD's Pd matching), `regions` (the variants'
per-batch region records) and `counts` (exact int32 counters) are their
building blocks. docs/metrics.md and docs/metrics_variants.md define them.
"""

from irstd_jax.metrics import variants
from irstd_jax.metrics.explanation import explain
from irstd_jax.metrics.explanation import Explanation
from irstd_jax.metrics.sets import score
from irstd_jax.metrics.streaming import compute
from irstd_jax.metrics.streaming import FA_VARIANTS
from irstd_jax.metrics.streaming import init
from irstd_jax.metrics.streaming import merge
from irstd_jax.metrics.streaming import MetricStats
from irstd_jax.metrics.streaming import PD_FA_THRESHOLDS
from irstd_jax.metrics.streaming import ROC_THRESHOLDS
from irstd_jax.metrics.streaming import update

__all__ = ['score', 'explain', 'Explanation', 'compute', 'FA_VARIANTS', 'init', 'merge',
           'MetricStats', 'PD_FA_THRESHOLDS', 'ROC_THRESHOLDS', 'update', 'variants']
