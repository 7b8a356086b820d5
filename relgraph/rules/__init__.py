"""Relevance rules, registered by op type (see :mod:`relgraph.rules.registry`)."""

from . import arithmetic, attention, elementwise, linear, normalization, patternnet, pooling, resize, structure  # noqa: F401
from .composites import COMPOSITES, RULE_NAMES, Composite, load_rule_map, resolve, to_q_formulation
from .registry import KIND_RULES, RULES, Env, RuleParams, kind_of, supported_ops

__all__ = ["COMPOSITES", "RULE_NAMES", "Composite", "load_rule_map", "resolve", "to_q_formulation", "KIND_RULES", "RULES", "Env",
           "RuleParams", "kind_of", "supported_ops"]
