"""Benchmarks of irstd_jax against the official PyTorch code.

Run `python -m benchmarks.run --out results.json [--torch-reference DIR ...]`.
Nothing here is imported by `irstd_jax`; torch is imported only by
`benchmarks.torch_reference`, and only when a reference checkout is given.
"""
