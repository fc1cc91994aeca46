"""Identity resolution: normalisation, deterministic and probabilistic matching, golden records (issue 3)."""
