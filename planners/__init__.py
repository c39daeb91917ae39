"""Planners behind one protocol (`Planner.plan(objective, state, ...) -> Plan`) and their objective."""

from .base import Plan, Planner
from .cem import CEM, CEMConfig
from .objective import Objective, RewardTerm, rank_returns

__all__ = ["CEM", "CEMConfig", "Objective", "Plan", "Planner", "RewardTerm", "rank_returns"]
