"""Measure what the actions do: design, assignment, analysis, uplift evaluation, quasi-experiments, attribution.

Pure functions on frames and arrays; imports only `custintel` and `features`. The decision service
(`serving`) assigns customers to arms through `experiments.assignment`; `flows` wires the rest.
"""
