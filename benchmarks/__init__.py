"""The project's own benchmarks, each named by what it measures: ``python -m benchmarks
[layers|overhead|resilience|load|scaling] [--quick]``.

They run from a checkout with nothing outside the repository, so every change can be held to
the per-layer and end-to-end budgets of the performance issue on the machine at hand.
"""
