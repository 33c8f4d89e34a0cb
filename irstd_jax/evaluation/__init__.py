"""Building blocks of `irstd_jax.metrics` (import that module, not these).

counts: exact int32 counters; components: connected components of sparse
binary maps; matching: BasicIRSTD's greedy Pd matching; batch: the per-batch
sufficient statistics.
"""
