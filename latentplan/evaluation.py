"""The one episode loop: an environment driven by an `MPCController` (or by uniform random actions,
PlaNet's seed episodes), recorded in the replay format. Training (collection, evaluation),
`compare` and the distillation runs all evaluate through `run_episode`, so a planner's return
comes from one code path; `Agent` is PlaNet's controller preset for it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from latentplan.planners.base import Planner
from latentplan.planners.objective import Objective
from latentplan.worldmodels.replay import Episode
from latentplan.worldmodels.state import WorldModel

from .control.controller import ControllerConfig, MPCController

__all__ = ["Agent", "EnvFailure", "EpisodeStats", "run_episode"]


class EnvFailure(RuntimeError):
    """The environment failed during an episode (`reset` or `step` raised a RuntimeError: a frame
    that cannot be rendered, a non-finite observation, physics that diverged); the message is the
    environment's own, and the original error is its `__cause__`."""


class Agent(MPCController):
    """PlaNet's agent as a preset of `MPCController`: no latency budget (the planner runs to
    completion, inline), no warm start unless asked, and an observation that is missing or
    NaN/inf raises instead of being predicted (offline, a bad observation is a bug).

    `act(obs, noise=)` filters the observation into the belief (posterior step), plans and
    returns the plan's first action `[A]` (receding horizon); `run_episode(env, agent,
    generator=g)` draws the posterior samples, the plans and the exploration noise from `g`,
    in that order at every decision, as PlaNet's agent does.

    Args:
        model: the `WorldModel` (e.g. a trained `RSSMWorldModel`).
        planner: any `Planner` (e.g. `CEM`).
        objective: builds the objective per decision from the model; default
            `Objective(model)` (the learned reward).
        warm_start: start each plan from the previous plan shifted by one step (PlaNet does
            not; off by default).
        seed: seeds the controller's own generators, used when an episode gets none.

    Raises (from `act`):
        ValueError: if the observation is missing, has the wrong shape or contains NaN/inf.

    Source: Hafner et al. 2019, "Learning Latent Dynamics for Planning from Pixels", Algorithm 1
    (the planning agent of data collection and evaluation).
    """

    def __init__(self, model: WorldModel, planner: Planner, *, objective: Callable[[WorldModel], Objective] | None = None,
                 warm_start: bool = False, seed: int = 0) -> None:
        config = ControllerConfig(budget_ms=None, mode="inline", warm_start=warm_start, seed=seed,
                                  on_bad_observation="raise")
        super().__init__(model, planner, config, objective=objective)


@dataclass(frozen=True)
class EpisodeStats:
    """Summary of one episode.

    Attributes:
        ret: undiscounted return (sum of environment rewards, action repeat included).
        decisions: number of actions chosen.
        env_steps: underlying environment steps (decisions x action repeat, or fewer at the end).
        plan_ms: mean wall milliseconds per completed planner call (0 for random actions).
        model_evals: mean imagined transitions per decision (0 for random actions).
    """

    ret: float
    decisions: int
    env_steps: int
    plan_ms: float
    model_evals: float


def _random_action(a_dim: int, generator: torch.Generator | None) -> np.ndarray:
    """A uniform action in `[-1, 1]^A` (`[A]` float32) from `generator` (PlaNet's seed episodes)."""
    dev = generator.device if generator is not None else "cpu"
    u = torch.rand(a_dim, generator=generator, device=dev) * 2 - 1
    return u.cpu().numpy().astype(np.float32)


def _env_call(call: Callable[[], Any]) -> Any:
    """`call()` (the env's `reset` or `step`), its RuntimeError raised as `EnvFailure`."""
    try:
        return call()
    except RuntimeError as err:
        raise EnvFailure(str(err)) from err


def check_max_decisions(max_decisions: Any, where: str) -> None:
    """Raise `ValueError` (prefixed with `where`) unless `max_decisions` is `None` or an int >= 1."""
    if max_decisions is not None and (isinstance(max_decisions, bool) or not isinstance(max_decisions, numbers.Integral)
                                      or max_decisions < 1):
        raise ValueError(f"{where}: max_decisions must be an int >= 1 or None; got {max_decisions!r}")


def run_episode(
    env: gym.Env,
    controller: MPCController | None,
    *,
    seed: int,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    max_decisions: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Episode, EpisodeStats]:
    """Run one episode and record it in the replay format.

    The controller is reset for the episode (`controller.reset(generator=generator)`) and its
    statistics zeroed, so `controller.stats()` and `controller.latencies_ms` describe this
    episode afterwards (the latencies: its newest `ControllerConfig.stats_window` decisions).

    Args:
        env: an env from `latentplan.envs.make` (actions in `[-1, 1]^A`).
        controller: the acting `MPCController` (e.g. an `Agent`), or `None` for uniform random
            actions (PlaNet's seed episodes).
        seed: passed to `env.reset(seed=)`: the episode is reproducible from it.
        noise: std of the Gaussian exploration noise on the controller's actions (action units).
        generator: the episode's randomness: the posterior samples, plans and noise of the
            controller, or the random actions. `None`: the controller's own generators (or
            the global generator for random actions).
        max_decisions: stop after this many decisions, an int >= 1 (default: until the env ends it).
        on_step: called with the decision index after every step (progress bars).

    Returns:
        `(episode, stats)`: the `Episode` dict (`obs [T+1, ...]`, `action [T+1, A]`,
        `reward [T+1]`, `is_first [T+1]`; see `latentplan.worldmodels.Episode`; pixel envs add
        `state [T+1, S]`) and its `EpisodeStats`.

    Raises:
        ValueError: a bad `max_decisions`; from `controller.act` (see `MPCController.filter`).
        EnvFailure: `env.reset` or `env.step` raised a RuntimeError (rendering failed, a
            non-finite observation, ...), with the env's message.
    """
    check_max_decisions(max_decisions, "run_episode")
    obs, info = _env_call(lambda: env.reset(seed=seed))
    a_dim = env.action_space.shape[0]
    obs_list, act_list, rew_list = [obs], [np.zeros(a_dim, np.float32)], [0.0]
    # pixel envs carry the true state beside the frame (probe heads' targets); for states it would duplicate obs
    pixels = np.asarray(obs).dtype == np.uint8
    states = [info["state"]] if pixels and "state" in info else None
    if controller is not None:
        controller.reset(generator=generator)
        controller.reset_stats()
    ret, env_steps, t, done = 0.0, 0, 0, False
    while not done:
        if controller is None:
            action = _random_action(a_dim, generator)
        else:
            action = controller.act(obs, noise=noise)
        obs, reward, terminated, truncated, info = _env_call(lambda: env.step(action))
        obs_list.append(obs)
        act_list.append(action)
        rew_list.append(float(reward))
        if states is not None:
            states.append(info["state"])
        ret += float(reward)
        env_steps += int(info.get("env_steps", 1))
        t += 1
        done = terminated or truncated or (max_decisions is not None and t >= max_decisions)
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
    plan_ms, evals = 0.0, 0.0
    if controller is not None:
        s = controller.stats()
        plan_ms = s.plan_ms_mean if math.isfinite(s.plan_ms_mean) else 0.0
        evals = s.model_evals_per_step
    return episode, EpisodeStats(ret, t, env_steps, plan_ms, evals)
