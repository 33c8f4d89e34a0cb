"""Evaluating a model: one entry, `Evaluator(...).run(model_state)`.

evaluator: the jitted evaluation step and the `Evaluator` that streams a split
through it; report: scalar metrics, the results table, overlays and
summary.md; pictures: the images themselves (panels, overlays). The metric
definitions are in `irstd_jax.metrics`.
"""

from irstd_jax.evaluation.evaluator import Evaluator
from irstd_jax.evaluation.evaluator import predict_probs
from irstd_jax.evaluation.evaluator import Result
from irstd_jax.evaluation.report import Example

__all__ = ['Evaluator', 'Example', 'predict_probs', 'Result']
