"""Planners behind one protocol (`Planner.plan(objective, state, ...) -> Plan`): CEM (with iCEM,
softmax-refit and CEM+GD options), CMA-ES (Hansen 2016), MPPI (Williams et al. 2017), the gradient planner, iLQR / box-DDP,
sampled MCTS, a distilled policy; their objective, reward terms and the learned value."""

from .ascent import AscentConfig, ascend, require_differentiable
from .base import Plan, Planner, Policy
from .cem import CEM, CEMConfig, colored_noise
from .cmaes import CMAES, CMAESConfig, cma_constants
from .disagreement import disagreement
from .distill import DistillConfig, Distiller
from .gradient import GradientConfig, GradientPlanner
from .ilqr import ILQR, ILQRConfig, box_qp
from .mppi import MPPI, MPPIConfig, mppi_weights
from .objective import Objective, RewardTerm, rank_returns
from .policy import GaussianPolicy, PolicyConfig, PolicyPlanner, policy_rollout
from .rewards import (
    BoundReward, NoGradientError, Reward, RewardContext, RewardReport, Shared, check_reward, continuation, learned_reward,
    reward, shared,
)
from .value import ImaginedRollout, ValueConfig, ValueFunction, ValueLearner, lambda_returns, posterior_beliefs

__all__ = [
    "AscentConfig", "BoundReward", "CEM", "CEMConfig", "CMAES", "CMAESConfig", "DistillConfig", "Distiller", "GaussianPolicy", "GradientConfig",
    "GradientPlanner", "ILQR", "ILQRConfig", "ImaginedRollout", "MCTS", "MCTSConfig", "MPPI", "MPPIConfig", "NoGradientError",
    "Objective", "Plan", "Planner", "Policy", "PolicyConfig", "PolicyPlanner", "Reward", "RewardContext", "RewardReport", "RewardTerm",
    "Shared", "shared",
    "ValueConfig", "ValueFunction", "ValueLearner", "ascend", "box_qp", "check_reward", "cma_constants", "colored_noise",
    "continuation", "disagreement",
    "lambda_returns",
    "learned_reward", "mppi_weights",
    "policy_rollout", "posterior_beliefs", "rank_returns", "require_differentiable", "reward",
]


def __getattr__(name: str):
    """`MCTS` and `MCTSConfig` load on first use (PEP 562): the tree search brings numba, which
    every other planner does without."""
    if name in ("MCTS", "MCTSConfig"):
        from . import mcts

        return getattr(mcts, name)
    raise AttributeError(f"module 'latentplan.planners' has no attribute {name!r}")
