"""A synthetic multi-source customer world with a hidden ground truth.

The generator writes source drops the way an enterprise's systems export them
(CRM, billing, support, digital analytics, surveys, consent platform, product
catalogue, an acquired company's system, a past A/B test) and, in a separate
folder, the truth that only evaluation and benchmarks may read.
"""

from features.synthetic.config import WorldConfig
from features.synthetic.world import generate_world

__all__ = ["WorldConfig", "generate_world"]
