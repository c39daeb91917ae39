"""latentplan: planning and model-predictive control over one learned latent dynamics model.

The public facade. Layers: `latentplan.envs` (environments), `latentplan.worldmodels` (RSSM,
analytic models, replay), `latentplan.planners` (CEM with iCEM/softmax-refit/CEM+GD options, CMA-ES, MPPI,
the gradient planner, MCTS, the learned value, policy distillation, reward terms, the planner protocol); the
facade adds the planner registry (`latentplan.registry`), the training loop, the real-time
controller (`latentplan.control`), the comparison harness (`latentplan.compare`), checkpoints
(`latentplan.io`) and the command line (`latentplan.cli`).

Every name is imported lazily (PEP 562) on first use, so `import latentplan` is cheap and a
layer loads only what it uses: `lp.CEM` imports the planners, not gymnasium or dm_control.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("latentplan.planners", name) for name in (
        "CEM", "CMAES", "CMAESConfig", "MCTS", "CEMConfig", "DistillConfig", "Distiller", "GaussianPolicy", "GradientConfig",
        "GradientPlanner", "ILQR", "ILQRConfig", "MCTSConfig", "MPPI", "MPPIConfig", "NoGradientError", "Objective", "Plan",
        "Planner",
        "Policy", "PolicyConfig", "PolicyPlanner",
        "Reward", "Shared", "ValueConfig", "ValueFunction", "ValueLearner", "check_reward", "continuation", "disagreement",
        "learned_reward", "reward",
        "shared",
    )},
    **{name: ("latentplan.worldmodels", name) for name in (
        "AnalyticModel", "EnsembleConfig", "FusedRSSM", "LatentState", "PredictorEnsemble", "ReplayBuffer", "RSSMConfig",
        "RSSMWorldModel", "WorldModel",
    )},
    "Agent": ("latentplan.evaluation", "Agent"),
    "EpisodeStats": ("latentplan.evaluation", "EpisodeStats"),
    "run_episode": ("latentplan.evaluation", "run_episode"),
    "Budget": ("latentplan.registry", "Budget"),
    "make_planner": ("latentplan.registry", "make_planner"),
    "register_planner": ("latentplan.registry", "register_planner"),
    "compare_planners": ("latentplan.compare", "compare"),  # `latentplan.compare` stays the module
    "TrainConfig": ("latentplan.config", "TrainConfig"),
    "demo_config": ("latentplan.config", "demo_config"),
    **{name: ("latentplan.control", name) for name in (
        "AsyncLoop", "ControllerConfig", "ControllerStats", "LoopStats", "MPCController", "Robot", "SimulatedRobot",
        "SyncLoop", "run_control_loop",
    )},
    **{name: ("latentplan.training", name) for name in (
        "CheckpointMismatch", "Trainer", "TrainSummary", "load_checkpoint",
    )},
}

#: submodules reachable as attributes before they are imported (`lp.io.load_policy`, `lp.registry`)
_SUBMODULES = frozenset({
    "cli", "compare", "config", "control", "distillation", "envs", "evaluation", "exploration", "io", "planners", "plots",
    "registry", "statistics", "training", "worldmodels",
})

__all__ = sorted([*_EXPORTS, "make_env", "train"])


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name in this module."""
    if name in _SUBMODULES:
        return importlib.import_module(f"latentplan.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentplan' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the submodules (not this module's own imports, e.g. `importlib`)."""
    return sorted({*__all__, *_SUBMODULES, "__version__"})


def make_env(name: str, **kwargs):
    """Shorthand for `latentplan.envs.make(name, **kwargs)` (a `gymnasium.Env`)."""
    from latentplan import envs

    return envs.make(name, **kwargs)


def train(config=None, **overrides):
    """Run PlaNet's training loop with `config` (default `TrainConfig()`), fields overridden by keyword.

    Returns the `TrainSummary`; the run folder holds the checkpoint, metrics and curve.
    """
    import dataclasses

    from latentplan.config import TrainConfig
    from latentplan.exploration import make_trainer

    config = dataclasses.replace(config or TrainConfig(), **overrides)
    return make_trainer(config).run()  # explore=True: Plan2Explore's task-free collection
