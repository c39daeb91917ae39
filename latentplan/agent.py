"""The receding-horizon agent: filter observations into a belief, plan, act; and episode collection."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from latentplan.planners.base import Plan, Planner
from latentplan.planners.objective import Objective
from latentplan.worldmodels.replay import Episode
from latentplan.worldmodels.state import LatentState, WorldModel

__all__ = ["Agent", "EpisodeStats", "run_episode"]


class Agent:
    """A model-predictive controller for one environment: belief filtering plus replanning every step.

    Each `act(obs)` updates the belief with the posterior step `observe(belief, last_action, obs)`,
    calls `planner.plan(objective, belief)` and returns the plan's first action (receding horizon).

    Args:
        model: the `WorldModel` (e.g. a trained `RSSMWorldModel`).
        planner: any `Planner` (e.g. `CEM`).
        objective: builds the objective per call from the model; default `Objective(model)`
            (the learned reward).
        warm_start: pass the previous plan, shifted by one step, as the planner's warm start
            (PlaNet does not; off by default).

    Raises (from `act`):
        ValueError: if the observation has the wrong shape or contains NaN/inf.
    """

    def __init__(
        self,
        model: WorldModel,
        planner: Planner,
        *,
        objective: Callable[[WorldModel], Objective] | None = None,
        warm_start: bool = False,
    ) -> None:
        self.model = model
        self.planner = planner
        self.make_objective = objective or (lambda m: Objective(m))
        self.warm_start = warm_start
        self.reset()

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.action_low.device

    def reset(self) -> None:
        """Forget the belief and last plan: the next `act` starts a new episode."""
        self.belief: LatentState = self.model.initial(1)
        self.last_action = torch.zeros(1, self.model.action_dim, device=self.device)
        self.is_first = True
        self.last_plan: Plan | None = None

    @torch.no_grad()
    def observe(self, obs: np.ndarray | Tensor, *, generator: torch.Generator | None = None) -> LatentState:
        """Fold one observation into the belief (posterior step) and return the belief `[1]`."""
        o = torch.as_tensor(np.asarray(obs), device=self.device)[None]
        is_first = torch.tensor([self.is_first], device=self.device)
        self.belief = self.model.observe(self.belief, self.last_action, o, is_first, generator=generator)
        self.is_first = False
        return self.belief

    def act(
        self,
        obs: np.ndarray | Tensor,
        *,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Observe, plan and return the action to execute now, `[A]` float32 within bounds.

        Args:
            obs: the current observation (`[D]` float or `uint8 [3, 64, 64]`).
            noise: std of Gaussian exploration noise added to the planned action (then clipped).
            generator: randomness for the posterior sample, the planner and the noise.
        """
        belief = self.observe(obs, generator=generator)
        warm = self.last_plan.shift() if (self.warm_start and self.last_plan is not None) else None
        plan = self.planner.plan(self.make_objective(self.model), belief, warm_start=warm, generator=generator)
        self.last_plan = plan
        action = plan.first_action
        if noise > 0:
            action = action + noise * torch.randn(action.shape, generator=generator, device=action.device)
        action = torch.maximum(torch.minimum(action, self.model.action_high), self.model.action_low)
        self.last_action = action.detach()
        self.last_info = plan.info
        return action[0].cpu().numpy().astype(np.float32)

    def record_action(self, action: np.ndarray | Tensor) -> None:
        """Tell the agent which action was actually executed (e.g. a random one), `[A]`."""
        self.last_action = torch.as_tensor(np.asarray(action), dtype=torch.float32, device=self.device).reshape(1, -1)


@dataclass(frozen=True)
class EpisodeStats:
    """Summary of one episode.

    Attributes:
        ret: undiscounted return (sum of environment rewards, action repeat included).
        decisions: number of actions chosen.
        env_steps: underlying environment steps (decisions x action repeat, or fewer at the end).
        plan_ms: mean planning time per decision in milliseconds (0 for random actions).
        model_evals: mean imagined transitions per decision.
    """

    ret: float
    decisions: int
    env_steps: int
    plan_ms: float
    model_evals: float


def run_episode(
    env: gym.Env,
    agent: Agent | None,
    *,
    seed: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Episode, EpisodeStats]:
    """Run one episode and record it in the replay format.

    Args:
        env: an env from `latentplan.envs.make`.
        agent: the acting agent, or `None` for uniform random actions (PlaNet's seed episodes).
        seed: passed to `env.reset(seed=)`: the episode is reproducible from it.
        noise: exploration noise std for the agent's actions.
        generator: randomness for planning, noise and random actions.
        on_step: called with the decision index after every step (for progress bars).

    Returns:
        `(episode, stats)`: the `Episode` dict (see `latentplan.worldmodels.Episode`; pixel envs
        add `state`) and its `EpisodeStats`.
    """
    obs, info = env.reset(seed=seed)
    a_dim = env.action_space.shape[0]
    obs_list, act_list, rew_list = [obs], [np.zeros(a_dim, np.float32)], [0.0]
    # pixel envs carry the true state beside the frame (targets for probe heads); for state
    # observations it would only duplicate `obs`
    pixels = np.asarray(obs).dtype == np.uint8
    states = [info["state"]] if pixels and "state" in info else None
    if agent is not None:
        agent.reset()
    ret, env_steps, plan_ms, evals, t = 0.0, 0, 0.0, 0.0, 0
    done = False
    while not done:
        if agent is None:
            dev = generator.device if generator is not None else "cpu"
            u = torch.rand(a_dim, generator=generator, device=dev) * 2 - 1
            action = u.cpu().numpy().astype(np.float32)
        else:
            action = agent.act(obs, noise=noise, generator=generator)
            plan_ms += agent.last_info.get("plan_ms", 0.0)
            evals += agent.last_info.get("model_evals", 0)
        obs, reward, terminated, truncated, info = env.step(action)
        obs_list.append(obs)
        act_list.append(action)
        rew_list.append(float(reward))
        if states is not None:
            states.append(info["state"])
        ret += float(reward)
        env_steps += int(info.get("env_steps", 1))
        t += 1
        done = terminated or truncated
        if on_step is not None:
            on_step(t)
    episode: Episode = {
        "obs": np.stack(obs_list),
        "action": np.stack(act_list).astype(np.float32),
        "reward": np.asarray(rew_list, np.float32),
        "is_first": np.arange(t + 1) == 0,
    }
    if states is not None:
        episode["state"] = np.stack(states).astype(np.float32)
    stats = EpisodeStats(ret, t, env_steps, plan_ms / max(t, 1) if agent else 0.0, evals / max(t, 1) if agent else 0.0)
    return episode, stats
