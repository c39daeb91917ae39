"""Planners behind one protocol (`Planner.plan(objective, state, ...) -> Plan`), their objective and
reward terms."""

from .base import Plan, Planner, Policy
from .cem import CEM, CEMConfig, colored_noise
from .gradient import GradientConfig, GradientPlanner, require_differentiable
from .objective import Objective, RewardTerm, rank_returns
from .rewards import BoundReward, Reward, RewardContext, RewardReport, check_reward, learned_reward, reward

__all__ = [
    "BoundReward", "CEM", "CEMConfig", "GradientConfig", "GradientPlanner", "Objective", "Plan", "Planner", "Policy",
    "Reward", "RewardContext", "RewardReport", "RewardTerm", "check_reward", "colored_noise", "learned_reward",
    "rank_returns", "require_differentiable", "reward",
]
