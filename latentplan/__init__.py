"""latentplan: planning and model-predictive control over one learned latent dynamics model.

The public facade. Layers: `latentplan.envs` (environments), `latentplan.worldmodels` (RSSM,
analytic models, replay), `latentplan.planners` (CEM with iCEM/MPPI/CEM+GD options, the gradient
planner, MCTS, the learned value, policy distillation, reward terms, the planner protocol);
the facade adds the training loop, the real-time controller (`MPCController`) and the comparison
harness (`compare_planners`, the module `latentplan.compare`).
"""

from latentplan.planners import (
    CEM, MCTS, CEMConfig, DistillConfig, Distiller, GaussianPolicy, GradientConfig, GradientPlanner, MCTSConfig,
    Objective, Plan, Planner, Policy, PolicyConfig, PolicyPlanner, Reward, ValueConfig, ValueFunction, ValueLearner,
    check_reward, learned_reward, reward,
)
from latentplan.worldmodels import AnalyticModel, FusedRSSM, LatentState, ReplayBuffer, RSSMConfig, RSSMWorldModel, WorldModel

from .compare import Budget, register_planner
from .compare import compare as compare_planners  # `latentplan.compare` stays the module
from .config import TrainConfig, demo_config
from .evaluation import Agent, EpisodeStats, run_episode
from .control import (
    ControllerConfig, ControllerStats, LoopStats, MPCController, Robot, SimulatedRobot, run_control_loop,
)
from .training import CheckpointMismatch, Trainer, TrainSummary, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "Agent", "AnalyticModel", "Budget", "CEM", "CEMConfig", "CheckpointMismatch", "ControllerConfig",
    "ControllerStats", "DistillConfig", "Distiller", "EpisodeStats", "FusedRSSM", "GaussianPolicy", "GradientConfig",
    "GradientPlanner", "LatentState", "LoopStats", "MCTS", "MCTSConfig", "MPCController", "Objective", "Plan",
    "Planner", "Policy", "PolicyConfig", "PolicyPlanner", "Reward", "Robot", "SimulatedRobot", "ValueConfig",
    "ValueFunction", "ValueLearner", "check_reward", "compare_planners", "learned_reward", "register_planner", "reward",
    "ReplayBuffer", "RSSMConfig", "RSSMWorldModel", "TrainConfig", "TrainSummary", "Trainer", "WorldModel",
    "demo_config", "load_checkpoint", "make_env", "run_control_loop", "run_episode", "train",
]


def make_env(name: str, **kwargs):
    """Shorthand for `latentplan.envs.make(name, **kwargs)` (a `gymnasium.Env`)."""
    from latentplan import envs

    return envs.make(name, **kwargs)


def train(config: TrainConfig | None = None, **overrides) -> TrainSummary:
    """Run PlaNet's training loop with `config` (default `TrainConfig()`), fields overridden by keyword.

    Returns the `TrainSummary`; the run folder holds the checkpoint, metrics and curve.
    """
    import dataclasses

    config = dataclasses.replace(config or TrainConfig(), **overrides)
    return Trainer(config).run()
