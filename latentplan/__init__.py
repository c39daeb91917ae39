"""latentplan: planning and model-predictive control over one learned latent dynamics model.

The public facade. Layers: `latentplan.envs` (environments), `latentplan.worldmodels` (RSSM,
analytic models, replay), `latentplan.planners` (CEM with iCEM/MPPI/CEM+GD options, the gradient
planner, reward terms, the planner protocol).
"""

from latentplan.planners import (
    CEM, CEMConfig, GradientConfig, GradientPlanner, Objective, Plan, Planner, Reward, check_reward,
    learned_reward, reward,
)
from latentplan.worldmodels import AnalyticModel, LatentState, ReplayBuffer, RSSMConfig, RSSMWorldModel, WorldModel

from .agent import Agent, EpisodeStats, run_episode
from .config import TrainConfig, demo_config
from .training import CheckpointMismatch, Trainer, TrainSummary, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "Agent", "AnalyticModel", "CEM", "CEMConfig", "CheckpointMismatch", "EpisodeStats", "GradientConfig",
    "GradientPlanner", "LatentState", "Objective", "Plan", "Planner", "Reward", "check_reward", "learned_reward",
    "reward", "ReplayBuffer", "RSSMConfig", "RSSMWorldModel", "TrainConfig",
    "TrainSummary", "Trainer", "WorldModel", "demo_config", "load_checkpoint", "make_env", "run_episode", "train",
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
