"""Training recipes: named `TrainConfig` presets for a task and an environment-step budget.

A recipe fixes how a run learns (model size, planner, updates per episode, critic); the suite
(`latentplan.suite`) fills in the task, the seed, the episodes a step budget buys and the run folder.

- `planet`: PlaNet's published settings (Hafner et al. 2019, Appendix A): RSSM 200/30, CEM H=12,
  I=10, J=1000, K=100, 5 seed episodes, C=100 updates of 50 x 50 chunks per episode, N(0, 0.3)
  exploration. Kept as published so comparisons with it stay reproducible.
- `demo`: `latentplan demo`'s CPU-sized settings (RSSM 128, CEM J=100, I=5, 50 updates of 32 x 32).
- `fast`: a candidate for learning faster per environment step on a CPU: `demo`'s sizes, 3 seed
  episodes, 100 updates per episode, and a critic (TD(lambda) in imagination, `value_every=25`)
  that bootstraps the planner's returns at the horizon (`plan_with_value`, as in TD-MPC, Hansen
  et al. 2022). Measured against `planet`/`demo` in docs/benchmarks.md; not a tuned result.
- `tiny`: the smallest run that exercises every part (tests and CI), not for results.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from latentplan.planners.cem import CEMConfig
from latentplan.planners.value import ValueConfig
from latentplan.worldmodels.rssm import RSSMConfig

from .config import TrainConfig, demo_config

__all__ = ["RECIPES", "recipe_config"]


def _planet(**kw) -> TrainConfig:
    return TrainConfig(**kw)


def _demo(**kw) -> TrainConfig:
    return demo_config(max_wall_minutes=None, **kw)


def _fast(**kw) -> TrainConfig:
    return demo_config(max_wall_minutes=None, updates_per_episode=100, value_every=25, plan_with_value=True,
                       value=ValueConfig(batch=16, hidden=(128, 128)), **kw)


def _tiny(**kw) -> TrainConfig:
    return TrainConfig(updates_per_episode=2, batch_size=4, chunk_length=8,
                       model=RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
                       planner=CEMConfig(horizon=4, iterations=2, candidates=16, elites=4), **kw)


#: name -> (builder of a TrainConfig from keyword overrides, seed episodes it asks for)
RECIPES: dict[str, tuple[Callable[..., TrainConfig], int]] = {
    "planet": (_planet, 5),
    "demo": (_demo, 5),
    "fast": (_fast, 3),
    "tiny": (_tiny, 1),
}


def recipe_config(recipe: str, *, env: str, episodes: int, seed: int, run_dir: str, **overrides) -> TrainConfig:
    """The `TrainConfig` of one run of `recipe` on `env`.

    Args:
        recipe: a key of `RECIPES`.
        env: a `latentplan.envs.make` name.
        episodes: total episodes (seed episodes included); the recipe's seed episodes are capped
            at `episodes - 1` so that at least one episode is planned (at `episodes = 1`, one).
        seed: the run's seed.
        run_dir: the run folder.
        **overrides: any other `TrainConfig` field (e.g. `action_repeat`, `eval_every`).

    Raises:
        ValueError: for an unknown recipe (the message lists them) or an invalid field value.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    build, seed_episodes = RECIPES[recipe]
    seed_episodes = max(1, min(seed_episodes, episodes - 1))
    config = build(env=env, episodes=episodes, seed=seed, run_dir=run_dir, seed_episodes=seed_episodes)
    return dataclasses.replace(config, **overrides)
