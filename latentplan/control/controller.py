"""The model-predictive controller: a belief filtered from observations, a planner called within a
latency budget, and a safe fallback, behind a small public step API.

`MPCController` is the receding-horizon loop of PlaNet (Hafner et al. 2019) made safe for a real
robot. Its steps are public, so that every loop (the synchronous and asynchronous control loops
of `latentplan.control.loop`, the episode loop of `latentplan.evaluation`) is written on them:

- `filter(obs)`: the posterior step, folding an observation into the belief;
- `predict(action)`: the prior step, the belief one step ahead without an observation;
- `plan(...)`: one planner call, warm-started from the newest plan shifted to the step, checked,
  and kept as the newest plan;
- `fallback(...)` / `action_at(step)`: what answers a decision without a fresh plan;
- `record(action, outcome=...)`: the action actually sent, and how it was decided (statistics);
- `act(obs)`: the four above in a row, within the budget.

Why this module is about 820 lines (over the ~500 of the house rules): the controller is one
state machine (the belief, the newest plan and its step, the planner thread, the counts) whose
public steps share that state and whose guarantees (deadlines, fallbacks, bounds, counts) hold
only together; about half of the lines are the documentation of that public API. Its statistics
records live in `stats.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor

from latentplan.planners.base import Plan, Planner, Policy
from latentplan.planners.objective import Objective
from latentplan.worldmodels.state import LatentState, WorldModel

from .stats import DEFAULT_WINDOW, ControllerStats, Window

__all__ = ["Clock", "ControllerConfig", "MPCController", "Outcome"]

logger = logging.getLogger("latentplan.control")

#: a time source in seconds (`time.perf_counter` or a test's fake clock)
Clock = Callable[[], float]
#: how a decision was made (see `MPCController.record`)
Outcome = Literal["planned", "late", "missed", "failed"]
_OUTCOMES = ("planned", "late", "missed", "failed")


@dataclass(frozen=True)
class ControllerConfig:
    """Settings of `MPCController`.

    Attributes:
        budget_ms: latency budget of one `act` call in milliseconds of wall time, from the call
            (the observation is in hand) to the returned action. `None`: no deadline, the
            planner runs to completion (offline evaluation).
        mode: how the budget is kept. `"thread"`: the planner runs in the controller's worker
            thread and `act` returns by the budget whatever the planner does; if the plan is not
            ready, the fallback answers and the step counts as a deadline miss (the late plan is
            kept and used, indexed by time, once it arrives). `"inline"`: the planner runs in the
            caller's thread and only gets the deadline (anytime planners stop at it); a plan
            that comes back late is still used and the step counts as a deadline miss. With
            `budget_ms=None` both modes plan inline.
        margin_ms: milliseconds kept back from the budget for returning the action (the thread
            mode stops waiting at `budget_ms - margin_ms`). Also subtracted from the deadline
            given to the planner, together with the running estimate of one planner iteration
            (an anytime planner checks its deadline after an iteration, so an iteration that
            starts just before the planner's deadline still ends inside the budget).
        warm_start: start each plan from the newest plan shifted to the current step
            (receding-horizon warm start; PlaNet does not).
        seed: seeds the planner's generator (`seed`) and the filter's posterior samples
            (`seed + 1`), each a `torch.Generator` on the model's device, used in episodes
            that `reset` gives no generator of their own.
        on_bad_observation: a missing or NaN/inf observation, one whose shape is not the
            model's, or one that the filter (`model.observe`) raises for, once the episode has a
            belief from a good observation: `"predict"` the belief open-loop with the model's
            prior (a robot whose sensor drops out); `"raise"` a `ValueError` (offline evaluation,
            where a bad observation is a bug). Both count an observation failure. Before the
            episode's first good observation there is no belief to predict from: a rejected
            observation raises a `ValueError` whatever this says.
        stats_window: how many of the newest decisions (and planner calls, and loop ticks) the
            latency percentiles of `stats()` and `LoopStats` are computed over; counts, maxima
            and means cover all of them. Bounds the statistics' memory in a long run (8 bytes
            a value: 0.8 MB per series by default).

    Raises:
        ValueError: if `budget_ms` is not a positive finite number or `None`, `margin_ms` is
            not a finite number >= 0 or not below `budget_ms`, `seed` is not an int,
            `stats_window` is not an int >= 1, or `mode` / `on_bad_observation` is unknown
            (each naming the field; a bool is not a number here).
    """

    budget_ms: float | None = None
    mode: Literal["thread", "inline"] = "thread"
    margin_ms: float = 1.0
    warm_start: bool = True
    seed: int = 0
    on_bad_observation: Literal["predict", "raise"] = "predict"
    stats_window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        for name in ("budget_ms", "margin_ms"):
            v = getattr(self, name)
            if (v is not None or name == "margin_ms") and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise ValueError(f"ControllerConfig.{name} must be a number (ms); got {type(v).__name__} {v!r}")
        for name, low in (("seed", None), ("stats_window", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (low is not None and v < low):
                raise ValueError(f"ControllerConfig.{name} must be an int{'' if low is None else f' >= {low}'}; got {v!r}")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ValueError(f"ControllerConfig.budget_ms must be a positive number or None; got {self.budget_ms}")
        if not (math.isfinite(self.margin_ms) and self.margin_ms >= 0):
            raise ValueError(f"ControllerConfig.margin_ms must be >= 0; got {self.margin_ms}")
        if self.budget_ms is not None and self.margin_ms >= self.budget_ms:
            raise ValueError(
                f"ControllerConfig.margin_ms ({self.margin_ms}) must be below budget_ms ({self.budget_ms})"
            )
        if self.mode not in ("thread", "inline"):
            raise ValueError(f"ControllerConfig.mode must be 'thread' or 'inline'; got {self.mode!r}")
        if self.on_bad_observation not in ("predict", "raise"):
            raise ValueError(
                f"ControllerConfig.on_bad_observation must be 'predict' or 'raise'; got {self.on_bad_observation!r}"
            )


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _model_obs_shape(model: WorldModel) -> tuple[int, ...] | None:
    """The shape of one observation when the model declares it (`model.config.obs_shape`, as the
    RSSM's config does, or `model.obs_shape`), else `None`."""
    for owner in (getattr(model, "config", None), model):
        shape = getattr(owner, "obs_shape", None)
        if shape:
            return tuple(int(d) for d in shape)
    return None


def _number(x: Any) -> float | None:
    """A finite number >= 0 from a planner's `info` (an int, float or one-element tensor); `None`
    for anything else (NaN, inf, negative, a string, a bool, a larger tensor)."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, RuntimeError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _count(x: Any) -> int:
    """A count from a planner's `info` (see `_number`); 0 for anything that is not one."""
    v = _number(x)
    return 0 if v is None else int(v)


class MPCController:
    """A model-predictive controller for one robot with a latency budget and a safe fallback.

    Each `act(obs)`: (1) `filter`s the observation into the belief with the model's posterior
    step `observe(belief, last_action, obs)`; (2) `plan`s from the belief, warm-started from the
    newest plan shifted to the current step (receding horizon), with the deadline of the budget;
    (3) `record`s and returns the plan's first action. When the planner is slow or fails:

    - anytime planners (CEM iterations, gradient steps, tree-search simulations) get the
      deadline `start + budget - margin - (one iteration)` and return their best plan so far;
    - thread mode: the planner runs on a `ThreadPoolExecutor(max_workers=1)`; if the plan is
      not ready by the budget, `act` returns the fallback action in time and counts a deadline
      miss; the late plan is kept (indexed by time) as soon as it arrives; while the planner is
      still busy with an old step, later steps are answered by the fallback too;
    - a planner that raises, or returns NaN/inf actions, a NaN/inf value (no finite return
      found; unless `info["evaluated"]` is False) or a wrongly shaped plan, is logged (logger
      `latentplan.control`), counted, and answered by the fallback; the non-finite candidate
      returns planners report in `info["nonfinite"]` are summed in the statistics;
    - the fallback is `fallback_policy.act(belief, deterministic=True)` when a policy is given
      (e.g. a distilled policy), else the newest plan indexed by time (its action for the
      current step, while the plan's horizon lasts), else the safe action (zero clipped into
      the bounds, counted): an action from beyond a plan's horizon is never sent;
    - every returned action is a finite float32 `[A]` array inside the model's bounds.

    Randomness: one generator per episode may be given to `reset(generator=)` (PlaNet's agent
    draws the posterior sample, the plan and the exploration noise from one generator); without
    it the controller's own generators seeded from `config.seed` are used.

    Args:
        model: the `WorldModel` (`observe`, `imagine_step`, `initial`, `action_low/high`).
        planner: any `Planner`.
        config: `ControllerConfig`; keyword `overrides` replace its fields.
        objective: builds the objective from the model, once per plan call (default
            `Objective(model)`, the learned reward).
        fallback_policy: a `Policy` (`act(state [1], *, generator, deterministic) -> [1, A]`)
            answering the steps the planner cannot; `None` uses the newest plan.
        clock: the time source in seconds (default `time.perf_counter`); deadlines given to
            the planner are in the same clock, so a planner reading `time.perf_counter` needs
            the default.

    Raises:
        TypeError: if `planner` has no `plan` or `fallback_policy` no `act`.
        ValueError: on a bad config; from `act`/`filter`/`reset` for an observation rejected
            before the episode's first good one (a wrong shape, NaN/inf, missing, or refused by
            the model's `observe`), naming the expected and the received shape; for any
            rejected observation with `on_bad_observation="raise"`.

    Source: receding-horizon planning over a learned model as in PlaNet (Hafner et al. 2019,
    "Learning Latent Dynamics for Planning from Pixels"); warm starts from the shifted solution
    and anytime stopping as in iCEM (Pinneri et al. 2020) and MuJoCo MPC (Howell et al. 2022).
    """

    def __init__(
        self,
        model: WorldModel,
        planner: Planner,
        config: ControllerConfig | None = None,
        *,
        objective: Callable[[WorldModel], Objective] | None = None,
        fallback_policy: Policy | None = None,
        clock: Clock = time.perf_counter,
        **overrides: Any,
    ) -> None:
        config = config or ControllerConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
        if not hasattr(planner, "plan"):
            raise TypeError(f"MPCController: planner must have a plan(...) method; got {type(planner).__name__}")
        if fallback_policy is not None and not hasattr(fallback_policy, "act"):
            raise TypeError(
                f"MPCController: fallback_policy must have act(state, *, generator, deterministic); "
                f"got {type(fallback_policy).__name__}"
            )
        self.model, self.planner, self.config = model, planner, config
        self.make_objective = objective or (lambda m: Objective(m))
        self.fallback_policy = fallback_policy
        self.clock = clock
        self.device = model.action_low.device
        self.action_low = model.action_low.detach().to(self.device, torch.float32).reshape(-1)
        self.action_high = model.action_high.detach().to(self.device, torch.float32).reshape(-1)
        self.action_dim = int(self.action_low.numel())
        self.safe_action = torch.zeros(self.action_dim, device=self.device).clamp(self.action_low, self.action_high)
        self._own_plan_gen = torch.Generator(device=self.device).manual_seed(config.seed)
        self._own_filter_gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._lock = threading.Lock()
        self._iter_ms = 0.0
        self._epoch = 0
        # one observation's shape: the model's, else the first accepted observation's (then kept)
        self._obs_shape: tuple[int, ...] | None = _model_obs_shape(model)
        self._failures_logged = 0
        self.reset_stats()
        self.reset()

    # ------------------------------------------------------------------ episode state
    def reset(self, obs: np.ndarray | Tensor | None = None, *, generator: torch.Generator | None = None) -> None:
        """Start an episode: forget the belief, the plans and the last action.

        Args:
            obs: the episode's first observation (`[D]` float or `uint8 [3, 64, 64]`), filtered
                now; the next `act()` may then be called without an observation (or with the
                same array again: it is not filtered twice). Without it, the first `act(obs)`
                takes the first observation.
            generator: this episode's one source of randomness for the posterior samples, the
                planner and the exploration noise (on the model's device); `None`: the
                controller's own generators (seeded from `config.seed`, continuing across
                episodes).

        Raises:
            ValueError: from `filter(obs)`: `obs` is the episode's first observation, so a rejected
                one raises (see `filter`).
        """
        with self._lock:
            self._epoch += 1
            self._latest: tuple[Plan, int] | None = None
        self._plan_gen = generator if generator is not None else self._own_plan_gen
        self._filter_gen = generator if generator is not None else self._own_filter_gen
        self.belief: LatentState = self.model.initial(1)
        self._last_action = torch.zeros(1, self.action_dim, device=self.device)
        self._has_obs = False  # a good observation was filtered in this episode (there is a belief)
        self._reset_obs: np.ndarray | None = None
        self._step = 0
        if obs is not None:
            self.filter(obs)
            self._reset_obs = _numpy(obs).copy()

    def reset_stats(self) -> None:
        """Zero the statistics returned by `stats()` (the iteration-time estimate is kept)."""
        self._n = dict(steps=0, planned=0, deadline_misses=0, planner_failures=0, observation_failures=0,
                       fallbacks=0, late_steps=0, clipped_actions=0, safe_actions=0, policy_failures=0,
                       nonfinite_returns=0)
        window = self.config.stats_window
        self._latency_ms = Window(window)
        self._plan_ms = Window(window)
        self._evals = 0
        self._iterations = Window(window)
        # a planner call that started before this reset (e.g. one left stuck by an earlier run)
        # is not counted in the new statistics when it ends
        self._stats_gen = getattr(self, "_stats_gen", 0) + 1

    def stats(self) -> ControllerStats:
        """A snapshot of the statistics since the last `reset_stats()`."""
        p50, p95, p99, mx, mean = self._latency_ms.summary()
        q50, _, q99, _, q_mean = self._plan_ms.summary()
        n = self._n
        return ControllerStats(
            steps=n["steps"], planned=n["planned"], deadline_misses=n["deadline_misses"],
            planner_failures=n["planner_failures"], observation_failures=n["observation_failures"],
            fallbacks=n["fallbacks"], late_steps=n["late_steps"], clipped_actions=n["clipped_actions"],
            safe_actions=n["safe_actions"], policy_failures=n["policy_failures"],
            nonfinite_returns=n["nonfinite_returns"],
            latency_ms_p50=p50, latency_ms_p95=p95, latency_ms_p99=p99, latency_ms_max=mx, latency_ms_mean=mean,
            plan_ms_p50=q50, plan_ms_p99=q99, plan_ms_mean=q_mean,
            model_evals_per_step=self._evals / max(n["steps"], 1),
            iterations_mean=self._iterations.summary()[4],
            budget_ms=self.config.budget_ms,
        )

    @property
    def latencies_ms(self) -> list[float]:
        """Wall ms of the decisions since the last `reset_stats()`, oldest first (a copy,
        `[min(steps, config.stats_window)]`: the newest `stats_window` of them)."""
        return self._latency_ms.values().tolist()

    @property
    def iteration_ms(self) -> float:
        """The running estimate of one planner iteration in ms (0 until a plan reports `iterations`)."""
        return self._iter_ms

    @property
    def step(self) -> int:
        """Actions recorded in this episode: the time index t of the next decision (an int >= 0);
        a plan `actions [B=1, H, A]` made at step s gives its action `actions[0, t - s]`. A
        property: it raises nothing."""
        return self._step

    @property
    def latest(self) -> tuple[Plan, int] | None:
        """The newest usable plan of this episode and the step it was made for (`None`: none yet)."""
        with self._lock:
            return self._latest

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a planner call running in the worker thread (thread
        mode); True when none is running any more."""
        job = self._pending
        if job is None:
            return True
        wait_for([job], timeout=timeout)
        return job.done()

    def close(self, timeout: float = 0.0) -> None:
        """Stop the planner thread, without waiting for a planner call in flight (by default).

        Jobs not yet started are cancelled (`executor.shutdown(wait=False, cancel_futures=True)`)
        and `close` returns at once, even when the planner is stuck: Python cannot stop a thread,
        so a call in flight finishes in the background and its plan is not used by a new
        episode. The interpreter waits for that thread at exit (Python joins executor threads;
        a thread killed inside torch would abort the process), so a planner that never returns
        keeps the process alive. A later `submit` starts a new planner thread.

        Args:
            timeout: seconds to wait first for a call in flight to end (`wait_idle`); 0: none.
        """
        if self._executor is not None:
            if timeout > 0:
                self.wait_idle(timeout)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor, self._pending = None, None

    def __enter__(self) -> "MPCController":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ belief
    def _as_obs(self, obs: np.ndarray | Tensor) -> tuple[Tensor | None, str | None]:
        """The observation as a tensor on the model's device (float32 if floating), and why it is
        rejected before the filter sees it (not numeric, e.g. a string or an object array;
        complex; a shape other than the model's; NaN/inf), or `None`."""
        try:
            o = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs, device=self.device)
        except (TypeError, ValueError, RuntimeError) as err:  # strings, objects, ragged lists
            return None, f"observation of type {type(obs).__name__} is not numeric ({err})"
        if o.is_complex():
            return o, f"observation of dtype {o.dtype} is complex"
        if o.is_floating_point():
            o = o.to(torch.float32)
        if self._obs_shape is not None and tuple(o.shape) != self._obs_shape:
            return o, f"observation of shape {tuple(o.shape)}, expected {self._obs_shape}"
        if o.is_floating_point() and not bool(torch.isfinite(o).all()):
            return o, "observation contains NaN/inf"
        return o, None

    def _action_row(self, action: np.ndarray | Tensor, where: str) -> Tensor:
        """`action` as a `[1, A]` float32 row on the model's device; `ValueError` (naming `where`
        and `action`) when it is not numeric, not `A` numbers, or not finite."""
        try:
            a = torch.as_tensor(np.asarray(action) if not isinstance(action, Tensor) else action,
                                dtype=torch.float32, device=self.device).reshape(1, -1)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"MPCController.{where}: action must be [A={self.action_dim}] numbers; "
                             f"got {type(action).__name__}") from err
        if a.shape[1] != self.action_dim:
            raise ValueError(f"MPCController.{where}: action must be [A={self.action_dim}]; got {a.shape[1]} numbers")
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"MPCController.{where}: action holds NaN/inf: {a[0].tolist()}")
        return a

    @torch.no_grad()
    def filter(self, obs: np.ndarray | Tensor | None, action: np.ndarray | Tensor | None = None) -> LatentState:
        """Fold one observation into the belief: the posterior step `observe(belief, action, obs)`.

        An observation is rejected when it is missing (`None`), not numeric (a string, an object
        array) or complex, has a shape other than the
        model's (`model.config.obs_shape` or `model.obs_shape` when the model declares it, else
        the first accepted observation's, kept for the controller's life), holds NaN/inf, or
        makes `model.observe` raise. Once the episode has a belief from a good observation, a
        rejection counts an observation failure and, with `on_bad_observation="predict"`, the
        belief is predicted open-loop with `predict(action)`.

        Args:
            obs: the observation (`[D]` float or `uint8 [3, 64, 64]`), or `None` when it is
                missing.
            action: the action `[A]` sent before `obs` was taken; default the last recorded one.

        Returns:
            The new belief `[1]` (also `self.belief`).

        Raises:
            ValueError: for a rejected observation before the episode's first good one, whatever
                `on_bad_observation` says (there is no belief to predict from), naming the
                reason, the expected and the received shape; with `on_bad_observation="raise"`,
                for any rejected observation (an error of `model.observe` is then passed on as
                it is, after the first good observation); for an `action` that is not `[A]`
                finite numbers (naming `action`).
        """
        action = self._last_action if action is None else self._action_row(action, "filter")
        first = not self._has_obs
        o, reason = (None, "missing observation") if obs is None else self._as_obs(obs)
        if reason is None:
            try:
                self.belief = self.model.observe(self.belief, action, o[None], torch.tensor([first], device=self.device),
                                                 generator=self._filter_gen)
            except Exception as err:  # a filter failure must not stop the robot
                if first:
                    raise self._first_obs_error(f"{type(err).__name__} in observe: {err}", o) from err
                if self.config.on_bad_observation == "raise":
                    self._n["observation_failures"] += 1
                    raise
                reason = f"{type(err).__name__} in observe: {err}"
            else:
                self._has_obs = True
                if self._obs_shape is None:
                    self._obs_shape = tuple(o.shape)
                return self.belief
        if first:
            raise self._first_obs_error(reason, o)
        self._n["observation_failures"] += 1
        if self.config.on_bad_observation == "raise":
            raise ValueError(f"MPCController.filter: step {self._step}: {reason}")
        self._log(f"step {self._step}: {reason}; predicting the belief open-loop")
        self.belief = self.predict(action)
        return self.belief

    def _first_obs_error(self, reason: str, obs: Tensor | None) -> ValueError:
        """The error for an observation rejected before the episode's first good one."""
        expected = "unknown (the model declares none)" if self._obs_shape is None else str(self._obs_shape)
        received = "none" if obs is None else str(tuple(obs.shape))
        return ValueError(
            f"MPCController.filter: the episode's first observation was rejected ({reason}); expected shape "
            f"{expected}, received {received}. There is no belief to predict from: pass a good observation."
        )

    @torch.no_grad()
    def predict(self, action: np.ndarray | Tensor | None = None, belief: LatentState | None = None) -> LatentState:
        """The belief one step ahead without an observation: the model's prior step.

        Args:
            action: the action `[A]` sent; default the last recorded one.
            belief: the belief `[1]` to step from; default the current one.

        Returns:
            The predicted belief `[1]`: the prior mean where the model's `imagine_step` offers
            `sample=False`, else a prior sample. `self.belief` is not changed (`filter(None)`
            folds a missing observation in with this step).

        Raises:
            ValueError: `action` is not `[A]` finite numbers (naming `action`).
        """
        belief = self.belief if belief is None else belief
        action = self._last_action if action is None else self._action_row(action, "predict")
        return self.model.imagine_step(belief, action, sample=False)

    # ------------------------------------------------------------------ planning
    def _log(self, msg: str) -> None:
        self._failures_logged += 1
        if self._failures_logged <= 10 or self._failures_logged % 100 == 0:
            logger.warning("MPCController: %s", msg)

    def _warm_start(self, step: int) -> Plan | None:
        """The newest plan shifted to `step` (`None` without one or with warm starts off)."""
        latest = self.latest
        if not self.config.warm_start or latest is None:
            return None
        plan, k = latest
        h = plan.actions.shape[1]
        idx = (torch.arange(h, device=plan.actions.device) + max(step - k, 0)).clamp(max=h - 1)
        return Plan(plan.actions[:, idx], plan.value, dict(plan.info))

    def _check_plan(self, plan: Any) -> str | None:
        """Why `plan` is unusable, or `None` if it is fine."""
        if not isinstance(plan, Plan):
            return f"planner returned {type(plan).__name__}, not a Plan"
        a = plan.actions
        if a.dim() != 3 or a.shape[0] != 1 or a.shape[2] != self.action_dim or a.shape[1] < 1:
            return f"plan actions of shape {tuple(a.shape)}, expected [1, H, {self.action_dim}]"
        if not bool(torch.isfinite(a).all()):
            return "plan actions contain NaN/inf"
        evaluated = not (isinstance(plan.info, dict) and plan.info.get("evaluated", True) is False)
        if evaluated and not bool(torch.isfinite(plan.value).all()):
            return f"plan value {plan.value.tolist()} is not finite (the planner found no finite return)"
        return None

    def _planner_deadline(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return deadline - (self.config.margin_ms + self._iter_ms) / 1e3

    def plan(self, belief: LatentState | None = None, *, step: int | None = None, deadline: float | None = None,
             observed_at: float | None = None) -> Plan | None:
        """One planner call in this thread; a usable plan becomes the newest plan.

        Args:
            belief: the belief `[B=1]` to plan from (a `LatentState`, `deter [1, D]`, `stoch [1, S]`);
                default the current one.
            step: the decision the plan is for (its first action is for this step); default
                `self.step`. The warm start is the newest plan shifted to it.
            deadline: clock time (s) by which the decision must be made; the planner gets it
                minus `margin_ms` and one iteration's estimated time. `None`: no deadline.
            observed_at: clock time (s) the decision's observation was read; when given, the
                time from it to the plan being ready is recorded as the decision's latency
                (the asynchronous loop's latency).

        Returns:
            The `Plan` (`actions [B=1, H, A]`, `value [B=1]`), or `None` when the planner raised or returned an
            unusable plan (NaN/inf actions, a NaN/inf value unless `info["evaluated"]` is False,
            wrong shape), which is logged and counted as a planner failure. A returned plan's
            `info["nonfinite"]` is added to the statistics' `nonfinite_returns` either way.

        Raises:
            ValueError: `step` is not an int >= 0, or `deadline` / `observed_at` is not a clock
                time (a number, not NaN) or `None` (naming it): a caller's error, not the
                planner's. Nothing for the planner's errors (a bad belief, e.g. NaN, makes the
                planner raise `ValueError`, which is logged and counted as a failure); only
                exceptions outside the planner call (e.g. of the warm start's shift) propagate.
        """
        if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0):
            raise ValueError(f"MPCController.plan: step must be an int >= 0 or None; got {step!r}")
        for name, t in (("deadline", deadline), ("observed_at", observed_at)):
            if t is not None and (isinstance(t, bool) or not isinstance(t, numbers.Real) or math.isnan(t)):
                raise ValueError(f"MPCController.plan: {name} must be a clock time in seconds (a number, not NaN) "
                                 f"or None; got {t!r}")
        return self._plan(self.belief if belief is None else belief, self._step if step is None else step,
                          deadline, self._epoch, observed_at)

    def _plan(self, belief: LatentState, step: int, deadline: float | None, epoch: int,
              observed_at: float | None) -> Plan | None:
        gen = self._stats_gen
        warm = self._warm_start(step)
        t0 = self.clock()
        plan, error = None, None
        try:
            with torch.no_grad():
                plan = self.planner.plan(self.make_objective(self.model), belief, warm_start=warm,
                                         generator=self._plan_gen, deadline=self._planner_deadline(deadline))
        except Exception as err:  # reported and answered by the fallback, never raised
            error = err
        done = self.clock()
        plan = self._absorb(plan, error, step, epoch, (done - t0) * 1e3, gen == self._stats_gen)
        latency = None if observed_at is None else (done - observed_at) * 1e3
        if plan is not None and latency is not None and math.isfinite(latency) and gen == self._stats_gen:
            self._latency_ms.append(latency)
        return plan

    def _absorb(self, plan: Any, error: BaseException | None, step: int, epoch: int, duration_ms: float,
                count: bool = True) -> Plan | None:
        """Check a finished planner call; store a good plan as the newest; count a failure and
        the non-finite returns the planner reports (not when `count` is False: the call started
        before the last `reset_stats()`).

        The planner's `info` is only trusted where it is a finite number >= 0: a NaN, infinite,
        negative or non-number `plan_ms`, `iterations`, `model_evals` or `nonfinite` is ignored
        (the measured `duration_ms` stands in for `plan_ms`), so that it cannot poison the
        iteration-time estimate and with it every later deadline."""
        info = plan.info if isinstance(plan, Plan) and isinstance(plan.info, dict) else {}
        n = self._n if count else dict(self._n)  # a stale call's counts go nowhere
        n["nonfinite_returns"] += _count(info.get("nonfinite", 0))
        reason = f"planner raised {type(error).__name__}: {error}" if error is not None else self._check_plan(plan)
        if reason is not None:
            n["planner_failures"] += 1
            self._log(f"step {step}: {reason}; answered by the fallback")
            return None
        ms = _number(info.get("plan_ms"))
        ms = duration_ms if ms is None else ms
        iters = _number(info.get("iterations"))
        iters = iters if iters is not None and iters >= 1 else None
        if count:
            self._evals += _count(info.get("model_evals", 0))
            if math.isfinite(duration_ms):
                self._plan_ms.append(duration_ms)
            if iters:
                self._iterations.append(iters)
        if iters and math.isfinite(ms):
            per = ms / iters
            self._iter_ms = per if per > self._iter_ms else 0.9 * self._iter_ms + 0.1 * per
        with self._lock:
            if epoch == self._epoch and (self._latest is None or step >= self._latest[1]):
                self._latest = (plan, step)
        return plan

    def action_at(self, step: int, latest: tuple[Plan, int] | None = None) -> Tensor | None:
        """The newest plan's (or `latest`'s) action `[A]` for time `step`: a plan made for step
        `k` with horizon H gives its action `step - k` for `k <= step < k + H`; `None` without
        a plan or outside its horizon (a used-up plan has no action to give: the fallback then
        answers with the safe action)."""
        latest = self.latest if latest is None else latest
        if latest is None:
            return None
        plan, k = latest
        i = step - k
        return plan.actions[0, i] if 0 <= i < plan.actions.shape[1] else None

    @torch.no_grad()
    def fallback(self, step: int | None = None, belief: LatentState | None = None) -> Tensor:
        """The fallback action `[A]` for `step` (default `self.step`) from `belief` (default the
        current one): the fallback policy's deterministic action, else the newest plan's action
        for `step` (`action_at`, within the plan's horizon), else `self.safe_action` itself
        (`record` counts it as a safe action). A policy that raises or returns a non-finite or
        wrongly sized action is logged, counted (`policy_failures`) and skipped; never raises."""
        step = self._step if step is None else step
        belief = self.belief if belief is None else belief
        if self.fallback_policy is not None:
            try:
                a = self.fallback_policy.act(belief, generator=None, deterministic=True)
                a = torch.as_tensor(a, device=self.device, dtype=torch.float32).reshape(-1)
                if a.numel() == self.action_dim and bool(torch.isfinite(a).all()):
                    return a
                self._log(f"step {step}: fallback policy returned an unusable action {a.tolist()}")
            except Exception as err:
                self._log(f"step {step}: fallback policy raised {type(err).__name__}: {err}")
            self._n["policy_failures"] += 1
        a = self.action_at(step)
        return self.safe_action if a is None else a

    # ------------------------------------------------------------------ acting
    def _finalize(self, action: np.ndarray | Tensor, count: bool) -> Tensor:
        """A finite `[A]` action inside the bounds (clipping counted; NaN -> the safe action, counted)."""
        if action is self.safe_action:
            self._n["safe_actions"] += int(count)
            return self.safe_action.clone()
        a = torch.as_tensor(action, device=self.device, dtype=torch.float32).reshape(-1)
        if a.numel() != self.action_dim or not bool(torch.isfinite(a).all()):
            self._n["fallbacks"] += int(count)
            self._n["safe_actions"] += int(count)
            return self.safe_action.clone()
        c = torch.maximum(torch.minimum(a, self.action_high), self.action_low)
        if count and not torch.equal(c, a):
            self._n["clipped_actions"] += 1
        return c

    def record(self, action: np.ndarray | Tensor, *, outcome: Outcome | None = None,
               latency_ms: float | None = None) -> np.ndarray:
        """Record the action sent for the current step; the next `filter`/`predict` conditions on it.

        Args:
            action: the action `[A]`; a non-finite or wrongly sized one becomes the safe action,
                one outside the bounds is clipped. `self.safe_action` itself (as `fallback`
                returns it when nothing covers the step) counts a safe action.
            outcome: how the decision was made, for `stats()`: `"planned"` (a plan made for this
                step, in time), `"late"` (such a plan, after the deadline: a deadline miss),
                `"missed"` (no plan by the deadline: a deadline miss answered by the fallback),
                `"failed"` (the planner failed: the fallback answered); `None`: not a decision
                of this controller (e.g. a random action), nothing counted.
            latency_ms: the decision's latency in ms, recorded (and counted late when over
                the budget); a finite number.

        Returns:
            The recorded action, `[A]` float32, finite and inside the bounds.

        Raises:
            ValueError: for an unknown `outcome`, or a `latency_ms` that is not a finite number
                (one NaN would make every latency percentile NaN).
        """
        if outcome is not None and outcome not in _OUTCOMES:
            raise ValueError(f"MPCController.record: outcome must be one of {_OUTCOMES} or None; got {outcome!r}")
        if latency_ms is not None and (isinstance(latency_ms, bool) or not isinstance(latency_ms, numbers.Real)
                                       or not math.isfinite(latency_ms)):
            raise ValueError(f"MPCController.record: latency_ms must be a finite number of ms; got {latency_ms!r}")
        a = self._finalize(action, count=outcome is not None)
        self._last_action = a[None].clone()
        self._step += 1
        n = self._n
        if outcome is not None:
            n["steps"] += 1
            n["planned"] += int(outcome in ("planned", "late"))
            n["deadline_misses"] += int(outcome in ("late", "missed"))
            n["fallbacks"] += int(outcome in ("missed", "failed"))
        if latency_ms is not None:
            self._latency_ms.append(latency_ms)
            budget = self.config.budget_ms
            n["late_steps"] += int(budget is not None and latency_ms > budget)
        return a.cpu().numpy().astype(np.float32)

    def _decide_in_thread(self, deadline: float) -> tuple[Tensor, Outcome]:
        """Thread mode: plan on the worker, wait until the budget, else the fallback."""
        step, belief, epoch = self._step, self.belief, self._epoch
        fallback = self.fallback(step, belief)  # ready before waiting: nothing left to compute late
        if self._pending is not None and not self._pending.done():
            return fallback, "missed"
        job = self.submit(self._plan, belief, step, deadline, epoch, None)
        self._pending = job
        # never longer than the budget, even if the clock went back since the deadline was set
        left = min(deadline - self.clock(), self.config.budget_ms / 1e3) - self.config.margin_ms / 1e3
        wait_for([job], timeout=max(0.0, left))
        if not job.done():
            return fallback, "missed"
        plan = job.result()
        return (fallback, "failed") if plan is None else (plan.actions[0, 0], "planned")

    def act(self, obs: np.ndarray | Tensor | None = None, *, noise: float = 0.0) -> np.ndarray:
        """Filter, plan within the budget, record and return the action to execute now.

        Args:
            obs: the observation taken after the previous action (`[D]` float or
                `uint8 [3, 64, 64]`). `None` right after `reset(obs)` plans from that first
                observation; `None` later means the observation is missing (see `filter`).
            noise: std of Gaussian exploration noise added to the action (in action units, drawn
                from the planner's generator after the plan; PlaNet's N(0, 0.3)), then clipped.

        Returns:
            `[A]` float32, finite and inside the model's action bounds.

        Raises:
            ValueError: `noise` is negative, NaN/inf or not a number (naming `noise`); `act()`
                without an observation before the episode's first good one; from
                `filter`: an observation rejected before the episode's first good one (naming the
                expected and the received shape), or any with `on_bad_observation="raise"`.
        """
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"MPCController.act: noise must be a finite std >= 0 (action units); got {noise!r}")
        t0 = self.clock()
        budget = self.config.budget_ms
        deadline = None if budget is None else t0 + budget / 1e3
        if obs is None and not self._has_obs:
            raise ValueError("MPCController.act: the episode has no observation yet; pass obs (or reset(obs))")
        reuse = self._reset_obs is not None and (obs is None or np.array_equal(_numpy(obs), self._reset_obs))
        if not reuse:
            self.filter(obs)
        self._reset_obs = None
        if deadline is not None and self.config.mode == "thread":
            action, outcome = self._decide_in_thread(deadline)
        else:
            plan = self.plan(deadline=deadline)
            if plan is None:
                action, outcome = self.fallback(), "failed"
            else:
                late = deadline is not None and self.clock() > deadline
                action, outcome = plan.actions[0, 0], ("late" if late else "planned")
        if noise > 0:
            action = action + noise * torch.randn((1, self.action_dim), generator=self._plan_gen, device=self.device)[0]
        return self.record(action, outcome=outcome, latency_ms=(self.clock() - t0) * 1e3)

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentplan-planner")
        return self._executor

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        """Run `fn(*args)` on the controller's planner thread and return its `Future`.

        The thread is one `ThreadPoolExecutor(max_workers=1)`, created on first use and stopped
        by `close()`; thread mode plans there, and so does the asynchronous control loop. Jobs
        run one at a time, in order. Raises `RuntimeError` after `close()` only if a job is
        submitted while the executor shuts down (a new one is made otherwise).
        """
        return self._worker().submit(fn, *args)

    def warmup(self, obs: np.ndarray | Tensor) -> float:
        """Plan three times, without a deadline, from the first-observation belief of `obs`.

        Primes the planner before real time starts. The first call, in the calling thread, and
        the second, on the planner thread (`submit`), pay the one-time costs (allocations,
        caches, compilation, and torch's first call in a new thread: tens to hundreds of ms);
        the third is measured and seeds the iteration-time estimate. The episode's belief,
        plans and statistics are not touched (the plans use their own generator).

        Returns:
            The planning time of the measured call in milliseconds.

        Raises:
            whatever the model's `observe` or the planner raises (this is set-up, not control).
        """
        self._warmup_plan(obs)
        self.submit(self._warmup_plan, obs).result()
        return self._warmup_plan(obs, True)

    @torch.no_grad()
    def _warmup_plan(self, obs: np.ndarray | Tensor, measure: bool = False) -> float:
        o = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs, device=self.device)
        if o.is_floating_point():
            o = o.to(torch.float32)
        belief = self.model.observe(self.model.initial(1), torch.zeros(1, self.action_dim, device=self.device),
                                    o[None], torch.tensor([True], device=self.device),
                                    generator=torch.Generator(device=self.device).manual_seed(0))
        t0 = self.clock()
        plan = self.planner.plan(self.make_objective(self.model), belief,
                                 generator=torch.Generator(device=self.device).manual_seed(0))
        ms = (self.clock() - t0) * 1e3
        iters = _number(plan.info.get("iterations")) if isinstance(plan.info, dict) else None
        if measure and iters is not None and iters >= 1 and math.isfinite(ms):
            self._iter_ms = max(self._iter_ms, ms / iters)
        return ms
