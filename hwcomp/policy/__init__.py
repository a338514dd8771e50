"""Hardware-aware compression policy: per-layer options × measured latency × sensitivity → a policy.

``space`` (what each layer may become) → ``layer_costs`` (latency of each option on the target,
output error when only that layer is compressed) → ``search`` (constrained choice and the Pareto front) →
``policy_io`` (the human-readable policy file).
"""

from .search import LayerProfile, OptionCost, Policy, pareto_front, search
from .space import Option

__all__ = ["LayerProfile", "Option", "OptionCost", "Policy", "pareto_front", "search"]
