"""Real-time model-predictive control: a controller with a latency budget, the robot protocol, a
fixed-rate control loop (synchronous, or with planning in a background thread and the plan indexed
by time), and a dm_control task running in wall-clock time as a simulated robot.

The controller is the receding-horizon loop of PlaNet (Hafner et al. 2019) made safe for a real
robot: the belief is filtered with the model's posterior, the planner is warm-started from its
shifted previous plan, anytime planners stop at the step's deadline, and a planner that is late
or fails is answered by a fallback (the previous plan indexed by time, or a distilled policy), so
that an action inside the bounds always goes out in time. The asynchronous loop follows MuJoCo MPC
(Howell et al. 2022, "Predictive Sampling: Real-time Behaviour Synthesis with MuJoCo"): the
planner runs in its own thread and the actuator thread reads the newest plan at the current time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from latentplan.planners.base import Plan, Planner, Policy
from latentplan.planners.objective import Objective
from latentplan.worldmodels.state import LatentState, WorldModel

__all__ = [
    "ControlConfig", "ControllerConfig", "ControllerStats", "LoopStats", "MPCController", "Robot",
    "SimulatedRobot", "run_control_loop",
]

logger = logging.getLogger("latentplan.control")

Clock = Callable[[], float]

# The interpreter's thread switch interval while a control loop runs (Python's default is 5 ms:
# a thread waking at its deadline could wait that long for the planner thread to yield the GIL).
_SWITCH_INTERVAL_S = 5e-4


# --------------------------------------------------------------------------------------- config
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
        warm_start: start each plan from the previous plan shifted to the current step
            (receding-horizon warm start; PlaNet does not).
        seed: seeds the planner's generator (`seed`) and the filter's posterior samples
            (`seed + 1`), each a `torch.Generator` on the model's device.

    Raises:
        ValueError: if `budget_ms` is not a positive finite number or `None`, `margin_ms` is
            negative or not below `budget_ms`, or `mode` is unknown.
    """

    budget_ms: float | None = None
    mode: Literal["thread", "inline"] = "thread"
    margin_ms: float = 1.0
    warm_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
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


def _percentiles(values: list[float]) -> tuple[float, float, float, float, float]:
    """(p50, p95, p99, max, mean) of `values`, NaN for an empty list."""
    if not values:
        nan = float("nan")
        return nan, nan, nan, nan, nan
    v = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(v.max()), float(v.mean())


@dataclass(frozen=True)
class ControllerStats:
    """What an `MPCController` did since its last `reset_stats()`.

    Attributes:
        steps: decisions made (`act` calls, or ticks of the asynchronous loop).
        planned: decisions answered by a plan made for that very decision.
        deadline_misses: decisions for which no plan was ready by the deadline (thread mode and
            the asynchronous loop: the fallback answered), or whose plan came back after the
            budget (inline mode: the late plan was used).
        planner_failures: planner calls that raised or returned an unusable plan (NaN/inf
            actions, wrong shape); each was answered by the fallback.
        observation_failures: observations that were missing, held NaN/inf or made the filter
            raise; the belief was then predicted open-loop with the model's prior.
        fallbacks: decisions answered by the fallback (deadline misses of the thread mode and
            the asynchronous loop, and planner failures).
        late_steps: `act` calls that returned after the budget (thread mode: ideally 0).
        clipped_actions: actions that had to be clipped into the bounds.
        latency_ms_p50, latency_ms_p95, latency_ms_p99, latency_ms_max, latency_ms_mean: wall
            milliseconds per decision, from the observation to the action (for the asynchronous
            loop: from reading the observation to the plan for the next tick being ready).
        plan_ms_p50, plan_ms_p99: wall milliseconds of the planner calls that completed.
        model_evals_per_step: imagined transitions (`Plan.info["model_evals"]`) of all completed
            planner calls, divided by `steps`.
        iterations_mean: mean `Plan.info["iterations"]` of the completed planner calls.
        budget_ms: the latency budget (`None`: none).
    """

    steps: int
    planned: int
    deadline_misses: int
    planner_failures: int
    observation_failures: int
    fallbacks: int
    late_steps: int
    clipped_actions: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_max: float
    latency_ms_mean: float
    plan_ms_p50: float
    plan_ms_p99: float
    model_evals_per_step: float
    iterations_mean: float
    budget_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A two-column text table of the statistics."""
        pct = lambda n: f"{n} ({100.0 * n / max(self.steps, 1):.1f} %)"  # noqa: E731
        rows = [
            ("decisions", f"{self.steps}"),
            ("planned in time", pct(self.planned)),
            ("deadline misses", pct(self.deadline_misses)),
            ("planner failures", pct(self.planner_failures)),
            ("fallbacks", pct(self.fallbacks)),
            ("late actions", pct(self.late_steps)),
            ("observation failures", f"{self.observation_failures}"),
            ("clipped actions", f"{self.clipped_actions}"),
            ("latency p50/p95/p99 ms", f"{self.latency_ms_p50:.1f} / {self.latency_ms_p95:.1f} / {self.latency_ms_p99:.1f}"),
            ("latency max ms", f"{self.latency_ms_max:.1f}"),
            ("budget ms", "none" if self.budget_ms is None else f"{self.budget_ms:.1f}"),
            ("model evals / decision", f"{self.model_evals_per_step:.0f}"),
            ("planner iterations", f"{self.iterations_mean:.1f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# ------------------------------------------------------------------------------- planner worker
class _Job:
    """One planner call run by the worker thread."""

    __slots__ = ("fn", "step", "epoch", "done", "result", "error", "started", "finished", "absorbed")

    def __init__(self, fn: Callable[[], Any], step: int, epoch: int) -> None:
        self.fn, self.step, self.epoch = fn, step, epoch
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = self.finished = float("nan")
        self.absorbed = False

    def run(self, clock: Clock) -> None:
        self.started = clock()
        try:
            self.result = self.fn()
        except Exception as err:  # reported to the controller, never raised in the worker
            self.error = err
        finally:
            self.finished = clock()
            self.done.set()


class _Worker:
    """A daemon thread that runs `_Job`s one at a time (a blocked planner never blocks exit)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.current: _Job | None = None
        self._thread = threading.Thread(target=self._loop, name="latentplan-planner", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.done.is_set()

    def submit(self, job: _Job) -> None:
        self.current = job
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.run(self._clock)

    def close(self, timeout: float) -> None:
        """Stop after the job in flight (waiting for it up to `timeout` seconds)."""
        self._queue.put(None)
        self._thread.join(timeout)


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------------- controller
class MPCController:
    """A model-predictive controller for one robot with a latency budget and a safe fallback.

    Each `act(obs)`: (1) filters the observation into the belief with the model's posterior
    step `observe(belief, last_action, obs)`; (2) plans from the belief, warm-started from the
    previous plan shifted to the current step (receding horizon), with the deadline of the
    budget; (3) returns the plan's first action. What happens when the planner is slow or fails:

    - anytime planners (CEM iterations, gradient steps, tree-search simulations) get the
      deadline `start + budget - margin - (one iteration)` and return their best plan so far;
    - thread mode: if the plan is not ready by the budget, `act` returns the fallback action in
      time and counts a deadline miss; the late plan is used (indexed by time) once it arrives;
      while the planner is still busy with an old step, later steps are answered by the
      fallback too (one planner call runs at a time);
    - a planner that raises, or returns NaN/inf actions or a wrongly shaped plan, is logged (logger `latentplan.control`), counted, and answered by the fallback;
    - the fallback is `fallback_policy.act(belief, deterministic=True)` when a policy is given
      (e.g. a distilled policy), else the newest plan indexed by time (its action for the
      current step, the last one once the plan is used up), else the safe action (zero clipped
      into the bounds);
    - every returned action is a finite float32 `[A]` array inside the model's bounds.

    Statistics (`stats()`): latency percentiles, deadline misses, fallbacks, failures and
    model evaluations per step.

    Args:
        model: the `WorldModel` (`observe`, `imagine_step`, `initial`, `action_low/high`).
        planner: any `Planner`.
        config: `ControllerConfig`; keyword `overrides` replace its fields.
        objective: builds the objective from the model, once per plan call (default
            `Objective(model)`, the learned reward).
        fallback_policy: a `Policy` (`act(state [1], *, generator, deterministic) -> [1, A]`)
            answering the steps the planner cannot; `None` uses the previous plan.
        clock: the time source in seconds (default `time.perf_counter`); deadlines given to
            the planner are in the same clock, so a planner reading `time.perf_counter` needs
            the default.

    Raises:
        ValueError: on a bad config; from `act`/`reset` for an observation whose shape differs
            from the episode's first one, or `act()` without any observation in the episode.

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
        self.model = model
        self.planner = planner
        self.config = config
        self.make_objective = objective or (lambda m: Objective(m))
        self.fallback_policy = fallback_policy
        self.clock = clock
        self.device = model.action_low.device
        self.action_low = model.action_low.detach().to(self.device, torch.float32).reshape(-1)
        self.action_high = model.action_high.detach().to(self.device, torch.float32).reshape(-1)
        self.action_dim = int(self.action_low.numel())
        self.safe_action = torch.zeros(self.action_dim, device=self.device).clamp(self.action_low, self.action_high)
        self._gen_plan = torch.Generator(device=self.device).manual_seed(config.seed)
        self._gen_filter = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._iter_ms = 0.0
        self._epoch = 0
        self._failures_logged = 0
        self.reset_stats()
        self.reset()

    # ------------------------------------------------------------------ episode state
    def reset(self, obs: np.ndarray | Tensor | None = None) -> None:
        """Start an episode: forget the belief, the plans and the last action.

        Args:
            obs: the episode's first observation (`[D]` float or `uint8 [3, 64, 64]`), filtered
                now; the next `act()` may then be called without an observation (or with the
                same array again: it is not filtered twice). Without it, the first `act(obs)`
                takes the first observation.
        """
        with self._lock:
            self._epoch += 1
            self._latest: tuple[Plan, int] | None = None
        self.belief: LatentState = self.model.initial(1)
        self._last_action = torch.zeros(1, self.action_dim, device=self.device)
        self._has_obs = False
        self._reset_obs: np.ndarray | None = None
        self._obs_shape: tuple[int, ...] | None = None
        self._step = 0
        if obs is not None:
            self._filter(obs)
            self._reset_obs = _numpy(obs).copy()

    def reset_stats(self) -> None:
        """Zero the statistics returned by `stats()` (the iteration-time estimate is kept)."""
        self._n = dict(steps=0, planned=0, deadline_misses=0, planner_failures=0, observation_failures=0,
                       fallbacks=0, late_steps=0, clipped_actions=0)
        self._latency_ms: list[float] = []
        self._plan_ms: list[float] = []
        self._evals = 0
        self._iterations: list[float] = []

    def stats(self) -> ControllerStats:
        """A snapshot of the statistics since the last `reset_stats()`."""
        p50, p95, p99, mx, mean = _percentiles(self._latency_ms)
        q50, _, q99, _, _ = _percentiles(self._plan_ms)
        n = self._n
        return ControllerStats(
            steps=n["steps"], planned=n["planned"], deadline_misses=n["deadline_misses"],
            planner_failures=n["planner_failures"], observation_failures=n["observation_failures"],
            fallbacks=n["fallbacks"], late_steps=n["late_steps"], clipped_actions=n["clipped_actions"],
            latency_ms_p50=p50, latency_ms_p95=p95, latency_ms_p99=p99, latency_ms_max=mx, latency_ms_mean=mean,
            plan_ms_p50=q50, plan_ms_p99=q99, model_evals_per_step=self._evals / max(n["steps"], 1),
            iterations_mean=float(np.mean(self._iterations)) if self._iterations else float("nan"),
            budget_ms=self.config.budget_ms,
        )

    @property
    def latencies_ms(self) -> list[float]:
        """Wall ms of every decision since the last `reset_stats()` (a copy, `[steps]`)."""
        return list(self._latency_ms)

    @property
    def iteration_ms(self) -> float:
        """The running estimate of one planner iteration in ms (0 until a plan reports `iterations`)."""
        return self._iter_ms

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker thread, waiting up to `timeout` seconds for a planner call still in
        flight (anytime planners stop at their deadline; a thread killed inside torch at
        interpreter exit would abort the process)."""
        if self._worker is not None:
            self._worker.close(timeout)
            self._worker = None

    def __enter__(self) -> "MPCController":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ filtering
    def _as_obs(self, obs: np.ndarray | Tensor) -> Tensor:
        o = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs, device=self.device)
        if o.is_floating_point():
            o = o.to(torch.float32)
        shape = tuple(o.shape)
        if self._obs_shape is None:
            self._obs_shape = shape
        elif shape != self._obs_shape:
            raise ValueError(
                f"MPCController: observation of shape {shape} differs from the episode's first one {self._obs_shape}"
            )
        return o[None]

    @torch.no_grad()
    def _predict(self, belief: LatentState, action: Tensor) -> LatentState:
        """Open-loop prior step with the prior mean (`sample=False`)."""
        return self.model.imagine_step(belief, action, sample=False)

    @torch.no_grad()
    def _filter(self, obs: np.ndarray | Tensor | None, action: Tensor | None = None) -> LatentState:
        """Fold one observation into the belief; a missing/NaN/failing one is predicted open-loop."""
        action = self._last_action if action is None else action
        first = not self._has_obs
        reason = None
        if obs is None:
            reason = "missing observation"
        else:
            o = self._as_obs(obs)
            if o.is_floating_point() and not bool(torch.isfinite(o).all()):
                reason = "observation contains NaN/inf"
            else:
                is_first = torch.tensor([first], device=self.device)
                try:
                    self.belief = self.model.observe(self.belief, action, o, is_first, generator=self._gen_filter)
                except Exception as err:  # a filter failure must not stop the robot
                    reason = f"{type(err).__name__} in observe: {err}"
        if reason is not None:
            self._n["observation_failures"] += 1
            self._log(f"step {self._step}: {reason}; predicting the belief open-loop")
            self.belief = self.model.initial(1) if first else self._predict(self.belief, action)
        self._has_obs = True
        return self.belief

    # ------------------------------------------------------------------ planning
    def _log(self, msg: str) -> None:
        self._failures_logged += 1
        if self._failures_logged <= 10 or self._failures_logged % 100 == 0:
            logger.warning("MPCController: %s", msg)

    def _newest(self) -> tuple[Plan, int] | None:
        """The newest good plan and the step it was made for."""
        with self._lock:
            return self._latest

    def _warm_start(self, step: int) -> Plan | None:
        """The newest plan shifted to `step` (`None` without one or with warm starts off)."""
        latest = self._newest()
        if not self.config.warm_start or latest is None:
            return None
        plan, k = latest
        h = plan.actions.shape[1]
        idx = (torch.arange(h, device=plan.actions.device) + max(step - k, 0)).clamp(max=h - 1)
        return Plan(plan.actions[:, idx], plan.value, dict(plan.info))

    def _plan_action_at(self, step: int, latest: tuple[Plan, int] | None = None) -> Tensor | None:
        """The newest plan's (or `latest`'s) action for `step`, `[A]` (the last one once the plan
        is used up), or `None` without a plan."""
        latest = self._newest() if latest is None else latest
        if latest is None:
            return None
        plan, k = latest
        h = plan.actions.shape[1]
        return plan.actions[0, min(max(step - k, 0), h - 1)]

    @torch.no_grad()
    def _fallback(self, step: int, belief: LatentState) -> Tensor:
        """The fallback action `[A]` for `step` (policy, newest plan by time, or the safe action)."""
        if self.fallback_policy is not None:
            try:
                a = self.fallback_policy.act(belief, generator=None, deterministic=True)
                a = torch.as_tensor(a, device=self.device, dtype=torch.float32).reshape(-1)
                if a.numel() == self.action_dim and bool(torch.isfinite(a).all()):
                    return a
                self._log(f"step {step}: fallback policy returned an unusable action {a.tolist()}")
            except Exception as err:
                self._log(f"step {step}: fallback policy raised {type(err).__name__}: {err}")
        a = self._plan_action_at(step)
        return self.safe_action if a is None else a

    def _check_plan(self, plan: Any) -> str | None:
        """Why `plan` is unusable, or `None` if it is fine."""
        if not isinstance(plan, Plan):
            return f"planner returned {type(plan).__name__}, not a Plan"
        a = plan.actions
        if a.dim() != 3 or a.shape[0] != 1 or a.shape[2] != self.action_dim or a.shape[1] < 1:
            return f"plan actions of shape {tuple(a.shape)}, expected [1, H, {self.action_dim}]"
        if not bool(torch.isfinite(a).all()):
            return "plan actions contain NaN/inf"
        return None

    def _call_planner(self, belief: LatentState, step: int, deadline: float | None) -> Plan:
        warm = self._warm_start(step)
        with torch.no_grad():
            return self.planner.plan(
                self.make_objective(self.model), belief, warm_start=warm, generator=self._gen_plan, deadline=deadline
            )

    def _absorb(self, plan: Any, error: BaseException | None, step: int, epoch: int, duration_ms: float) -> Plan | None:
        """Check a finished planner call; store a good plan as the newest; count a failure."""
        if error is not None:
            reason = f"planner raised {type(error).__name__}: {error}"
        else:
            reason = self._check_plan(plan)
        if reason is not None:
            self._n["planner_failures"] += 1
            self._log(f"step {step}: {reason}; answered by the fallback")
            return None
        info = plan.info if isinstance(plan.info, dict) else {}
        self._evals += int(info.get("model_evals", 0) or 0)
        ms = float(info.get("plan_ms", duration_ms))
        self._plan_ms.append(duration_ms)
        iters = info.get("iterations")
        if iters:
            self._iterations.append(float(iters))
            per = ms / float(iters)
            self._iter_ms = per if per > self._iter_ms else 0.9 * self._iter_ms + 0.1 * per
        with self._lock:
            if epoch == self._epoch and (self._latest is None or step >= self._latest[1]):
                self._latest = (plan, step)
        return plan

    def _planner_deadline(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return deadline - (self.config.margin_ms + self._iter_ms) / 1e3

    def _collect(self) -> None:
        """Absorb a worker job that finished after its own step had been answered."""
        w = self._worker
        job = None if w is None else w.current
        if job is not None and job.done.is_set() and not job.absorbed:
            job.absorbed = True
            self._absorb(job.result, job.error, job.step, job.epoch, (job.finished - job.started) * 1e3)

    def _finalize(self, action: Tensor) -> Tensor:
        """A finite `[A]` action inside the bounds (clipping counted; NaN -> the safe action)."""
        a = torch.as_tensor(action, device=self.device, dtype=torch.float32).reshape(-1)
        if a.numel() != self.action_dim or not bool(torch.isfinite(a).all()):
            self._n["fallbacks"] += 1
            return self.safe_action.clone()
        c = torch.maximum(torch.minimum(a, self.action_high), self.action_low)
        if not torch.equal(c, a):
            self._n["clipped_actions"] += 1
        return c

    def warmup(self, obs: np.ndarray | Tensor) -> float:
        """Plan once, without a deadline, from the first-observation belief of `obs`.

        Primes the planner (allocations, caches) and the iteration-time estimate before real
        time starts; the episode's belief, plans and statistics are not touched (the plan uses
        its own generator).

        Returns:
            The planning time in milliseconds.

        Raises:
            whatever the model's `observe` or the planner raises (this is set-up, not control).
        """
        with torch.no_grad():
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
        iters = plan.info.get("iterations") if isinstance(plan.info, dict) else None
        if iters:
            self._iter_ms = max(self._iter_ms, ms / float(iters))
        return ms

    def act(self, obs: np.ndarray | Tensor | None = None) -> np.ndarray:
        """Observe, plan within the budget and return the action to execute now.

        Args:
            obs: the observation taken after the previous action (`[D]` float or
                `uint8 [3, 64, 64]`). `None` right after `reset(obs)` plans from that first
                observation; `None` later means the observation is missing (the belief is
                predicted open-loop and an observation failure counted).

        Returns:
            `[A]` float32, finite and inside the model's action bounds.

        Raises:
            ValueError: if the observation's shape differs from the episode's first one, or no
                observation was ever given in this episode.
        """
        t0 = self.clock()
        budget = self.config.budget_ms
        deadline = None if budget is None else t0 + budget / 1e3
        if obs is None and not self._has_obs:
            raise ValueError("MPCController.act: the episode has no observation yet; pass obs (or reset(obs))")
        reuse = self._reset_obs is not None and (obs is None or np.array_equal(_numpy(obs), self._reset_obs))
        if not reuse:
            self._filter(obs)
        self._reset_obs = None
        step, belief, epoch = self._step, self.belief, self._epoch
        n = self._n

        if deadline is not None and self.config.mode == "thread":
            self._collect()
            fallback = self._fallback(step, belief)  # ready before waiting: nothing left to compute late
            if self._worker is None:
                self._worker = _Worker(self.clock)
            if self._worker.busy:
                n["deadline_misses"] += 1
                n["fallbacks"] += 1
                action = fallback
            else:
                pdl = self._planner_deadline(deadline)
                job = _Job(lambda: self._call_planner(belief, step, pdl), step, epoch)
                self._worker.submit(job)
                job.done.wait(max(0.0, deadline - self.config.margin_ms / 1e3 - self.clock()))
                if job.done.is_set():
                    job.absorbed = True
                    plan = self._absorb(job.result, job.error, step, epoch, (job.finished - job.started) * 1e3)
                    if plan is None:
                        n["fallbacks"] += 1
                        action = fallback
                    else:
                        n["planned"] += 1
                        action = plan.actions[0, 0]
                else:
                    n["deadline_misses"] += 1
                    n["fallbacks"] += 1
                    action = fallback
        else:
            t_plan = self.clock()
            plan, error = None, None
            try:
                plan = self._call_planner(belief, step, self._planner_deadline(deadline))
            except Exception as err:
                error = err
            plan = self._absorb(plan, error, step, epoch, (self.clock() - t_plan) * 1e3)
            if plan is None:
                n["fallbacks"] += 1
                action = self._fallback(step, belief)
            else:
                n["planned"] += 1
                action = plan.actions[0, 0]
                if deadline is not None and self.clock() > deadline:
                    n["deadline_misses"] += 1

        action = self._finalize(action)
        self._last_action = action[None].clone()
        self._step += 1
        n["steps"] += 1
        latency = (self.clock() - t0) * 1e3
        self._latency_ms.append(latency)
        if budget is not None and latency > budget:
            n["late_steps"] += 1
        return action.cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------- robot
@runtime_checkable
class Robot(Protocol):
    """What `run_control_loop` drives: a sensor, an actuator and a control period.

    Attributes:
        period: the control period the robot (and the model) expects, in wall seconds.

    Methods:
        read_observation() -> the current observation (`[D]` float32 for state models).
        send_action(action `[A]` float32) -> None: the actuator holds it until the next one
            (zero-order hold).

    Optional members the loop uses when present: `done` (bool: the episode is over),
    `stats()` (a dict reported next to the loop's statistics).
    """

    period: float

    def read_observation(self) -> np.ndarray: ...

    def send_action(self, action: np.ndarray) -> None: ...


class SimulatedRobot:
    """A dm_control task running in wall-clock time, behind the `Robot` protocol.

    Simulated time advances with the clock: `sim_time = real_time_factor * (clock() - start)`,
    where `start` is the first `read_observation` or `send_action` after `reset` (so warming up
    a controller after `reset` costs no simulated time). Whatever the controller does, physics
    keeps going: the actuator holds the last action received (zero-order hold), and a late
    controller sees the world move on without it.

    Physics runs in steps of the task's control timestep `dt` (cartpole: 0.01 s) and is
    advanced lazily: every call first simulates all steps that have ended by the current
    simulated time. The result equals a simulator running in its own thread, without a
    thread. An action that arrives during a step is applied from its arrival time: the step is
    simulated with the time-weighted mean of the actions held during it (the same impulse as
    the continuous-time hold), so an action switch is neither delayed to the next step nor
    applied before it arrived.

    The model's decision is `action_repeat` physics steps (cartpole: 8 x 0.01 s = 80 ms of
    simulated time). `period = action_repeat * dt / real_time_factor` is the wall time of one
    decision: to control the cartpole model at 20 Hz (50 ms), use `real_time_factor=1.6`.

    Observations are the flat float32 state vector of `latentplan.envs.make(env, obs="state")`
    (cartpole: cart position, pole cos/sin, two velocities); actions are `[-1, 1]^A` like
    `make`'s, mapped affinely onto the task's bounds. With `seed=s` the episode starts from the
    same state as `make(env, seed=s).reset(seed=s)`.

    Args:
        env: a dm_control task as `"dmc:<domain>-<task>"`.
        action_repeat: physics steps per model decision; default PlaNet's for the domain
            (`latentplan.envs.PLANET_ACTION_REPEAT`, cartpole 8).
        real_time_factor: simulated seconds per wall second (> 0).
        seed: seed of the first episode.
        clock: the time source in seconds (default `time.perf_counter`).

    Attributes:
        period: wall seconds per decision; `dt`: simulated seconds per physics step;
        `action_low`, `action_high`: `[A]` float32 (-1 and 1); `done`: the episode is over
        (the task's time limit, cartpole 1000 steps = 10 s of simulated time).

    Raises:
        ValueError: for a name that is not `"dmc:..."`, a non-positive `real_time_factor`, or
            a bad `action_repeat`.
    """

    def __init__(
        self,
        env: str = "dmc:cartpole-swingup",
        *,
        action_repeat: int | None = None,
        real_time_factor: float = 1.0,
        seed: int = 0,
        clock: Clock = time.perf_counter,
    ) -> None:
        if not (isinstance(env, str) and env.startswith("dmc:")):
            raise ValueError(f"SimulatedRobot: env must be a dm_control task 'dmc:<domain>-<task>'; got {env!r}")
        if not (math.isfinite(real_time_factor) and real_time_factor > 0):
            raise ValueError(f"SimulatedRobot: real_time_factor must be > 0; got {real_time_factor}")
        from latentplan import envs
        from latentplan.envs.dmc import DEFAULT_DMC_ACTION_REPEAT, PLANET_ACTION_REPEAT

        domain = env[4:].partition("-")[0]
        if action_repeat is None:
            action_repeat = PLANET_ACTION_REPEAT.get(domain, DEFAULT_DMC_ACTION_REPEAT)
        if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"SimulatedRobot: action_repeat must be an int >= 1; got {action_repeat!r}")
        self.env_name = env
        self._env = envs.make(env, obs="state", action_repeat=1, seed=seed)
        self._dm = self._env.unwrapped._env  # the dm_control environment under shimmy's wrapper
        self.dt = float(self._dm.control_timestep())
        self.action_repeat = int(action_repeat)
        self.real_time_factor = float(real_time_factor)
        self.period = self.action_repeat * self.dt / self.real_time_factor
        spec = self._dm.action_spec()
        self._center = (np.asarray(spec.maximum, np.float64) + np.asarray(spec.minimum, np.float64)) / 2
        self._half = (np.asarray(spec.maximum, np.float64) - np.asarray(spec.minimum, np.float64)) / 2
        self._dtype = spec.dtype
        self.action_dim = int(np.prod(spec.shape))
        self.action_low = -np.ones(self.action_dim, np.float32)
        self.action_high = np.ones(self.action_dim, np.float32)
        self._keys = list(self._dm.observation_spec())
        self.clock = clock
        self._seed = seed
        self.reset(seed)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode (the clock starts at the next call) and return its first observation `[D]`."""
        obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._obs = np.asarray(obs, np.float32)
        self._start: float | None = None
        self._n = 0  # physics steps simulated
        self._held = np.zeros(self.action_dim, np.float64)
        self._segments: list[tuple[float, np.ndarray]] = [(0.0, self._held)]  # (start within step, action)
        self.done = False
        self._return = 0.0
        self._counts = dict(actions_received=0, actions_rejected=0, actions_clipped=0, reads=0)
        return self._obs.copy()

    def _now(self) -> float:
        """Simulated seconds since the start (starting the clock at the first call)."""
        t = self.clock()
        if self._start is None:
            self._start = t
        return (t - self._start) * self.real_time_factor

    @property
    def sim_time(self) -> float:
        """Simulated seconds of physics done so far."""
        return self._n * self.dt

    def _advance(self, now: float) -> None:
        eps = 1e-9 * self.dt
        while not self.done and (self._n + 1) * self.dt <= now + eps:
            if len(self._segments) == 1:
                u = self._segments[0][1]
            else:  # the time-weighted mean of the actions held during this step
                starts = [s for s, _ in self._segments] + [self.dt]
                u = sum(a * (starts[i + 1] - starts[i]) for i, (_, a) in enumerate(self._segments)) / self.dt
            ts = self._dm.step((self._center + self._half * u).astype(self._dtype))
            self._return += float(ts.reward or 0.0)
            self._n += 1
            self._segments = [(0.0, self._held)]
            self._obs = np.concatenate(
                [np.ravel(np.asarray(ts.observation[k], np.float64)) for k in self._keys]
            ).astype(np.float32)
            if ts.last():
                self.done = True

    def read_observation(self) -> np.ndarray:
        """The state at the end of the last completed physics step, `[D]` float32."""
        self._advance(self._now())
        self._counts["reads"] += 1
        return self._obs.copy()

    def send_action(self, action: np.ndarray) -> None:
        """Hold `action` (`[A]` in `[-1, 1]`) from now on.

        A wrongly shaped or non-finite action is rejected (the previous one stays) and counted;
        one outside `[-1, 1]` is clipped and counted. After the episode ends actions are ignored.
        """
        now = self._now()
        self._advance(now)
        self._counts["actions_received"] += 1
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,) or not np.all(np.isfinite(a)):
            self._counts["actions_rejected"] += 1
            return
        if np.any(a < -1.0) or np.any(a > 1.0):
            self._counts["actions_clipped"] += 1
            a = np.clip(a, -1.0, 1.0)
        if self.done:
            return
        offset = now - self._n * self.dt
        if offset <= 1e-9 * self.dt:
            self._segments = [(0.0, a)]
        else:
            self._segments.append((min(offset, self.dt), a))
        self._held = a

    def stats(self) -> dict[str, Any]:
        """Return, physics steps, simulated time and the action counts of this episode."""
        return {
            "return": self._return, "physics_steps": self._n, "sim_time_s": self.sim_time,
            "decisions_of_sim_time": self._n / self.action_repeat, "real_time_factor": self.real_time_factor,
            **self._counts,
        }


# ----------------------------------------------------------------------------------------- loop
@dataclass(frozen=True)
class LoopStats:
    """What `run_control_loop` measured.

    Attributes:
        mode: `"sync"` or `"async"`.
        rate_hz: control rate; `period_ms`: 1000 / rate.
        steps: actions sent.
        wall_s: wall seconds of the loop.
        overruns: ticks whose action went out after the tick's period had ended (sync: the
            decision took longer than the period; async: the actuator thread woke up too late).
        invalid_actions: actions from the controller that were not finite `[A]` arrays inside
            the bounds; the loop sent the safe action instead (should be 0).
        send_delay_ms_p50, send_delay_ms_p95, send_delay_ms_p99, send_delay_ms_max: wall ms from
            the tick to the action being sent.
        controller: the controller's `ControllerStats` for this run.
        robot: `robot.stats()` when the robot has it (e.g. the return), else `{}`.
    """

    mode: str
    rate_hz: float
    period_ms: float
    steps: int
    wall_s: float
    overruns: int
    invalid_actions: int
    send_delay_ms_p50: float
    send_delay_ms_p95: float
    send_delay_ms_p99: float
    send_delay_ms_max: float
    controller: ControllerStats
    robot: dict

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The loop's and the controller's statistics as a text table."""
        rows = [
            ("mode", self.mode), ("rate", f"{self.rate_hz:g} Hz ({self.period_ms:.1f} ms)"),
            ("actions sent", f"{self.steps}"), ("wall time", f"{self.wall_s:.2f} s"),
            ("overruns", f"{self.overruns}"), ("invalid actions", f"{self.invalid_actions}"),
            ("send delay p50/p99 ms", f"{self.send_delay_ms_p50:.2f} / {self.send_delay_ms_p99:.2f}"),
        ]
        for k in ("return", "actions_rejected", "actions_clipped", "sim_time_s"):
            if k in self.robot:
                v = self.robot[k]
                rows.append((f"robot {k}", f"{v:.1f}" if isinstance(v, float) else f"{v}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join([*(f"  {k.ljust(width)}  {v}" for k, v in rows), self.controller.table()])


def _send(robot: Robot, controller: MPCController, action: Any, low: np.ndarray, high: np.ndarray) -> int:
    """Send `action` if it is a finite `[A]` array inside the bounds, else the safe action; 1 if replaced."""
    a = np.asarray(action, dtype=np.float32).reshape(-1) if action is not None else None
    bad = a is None or a.shape != low.shape or not np.all(np.isfinite(a)) or np.any(a < low) or np.any(a > high)
    robot.send_action(controller.safe_action.cpu().numpy().astype(np.float32) if bad else a)
    return int(bad)


def _sleep_until(t: float, clock: Clock, sleep: Callable[[float], None]) -> None:
    dt = t - clock()
    if dt > 0:
        sleep(dt)


def run_control_loop(
    robot: Robot,
    controller: MPCController,
    rate_hz: float | None = None,
    steps: int | None = None,
    *,
    mode: Literal["sync", "async"] = "sync",
    clock: Clock | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_step: Callable[[int], None] | None = None,
) -> LoopStats:
    """Run `controller` on `robot` at a fixed rate for `steps` ticks (or until `robot.done`).

    The controller is reset (a new episode) and its statistics zeroed first. Tick `m` is due at
    `t0 + m / rate_hz`.

    - `mode="sync"`: at each tick read the observation, `controller.act(obs)` (within the
      controller's budget), send the action. The action goes out one decision latency after
      the observation; give the controller a `budget_ms` below the period.
    - `mode="async"`: planning runs in a background thread while actions go out at the fixed
      rate, as MuJoCo MPC does. At tick `m` the actuator (this thread) sends the newest plan's
      action for time `m` (plan made for tick `k`: its action `m - k`) and reads the
      observation; the planner thread filters it, predicts the belief at tick `m + 1` with
      the action just sent (the prior mean), and plans for tick `m + 1` with that tick as the
      deadline (`controller.config.budget_ms` after the observation, if set, caps it). A plan
      that is not ready by its tick is a deadline miss, answered by the fallback policy's action
      for the predicted belief (when the controller has one), else by the newest plan indexed
      by time, else the safe action. Tick 0 is planned synchronously within half a period, as
      no earlier plan exists (the planner thread has the other half for tick 1). The
      controller's `mode` is not used here.

    Every action sent is checked (finite, `[A]`, inside the controller's bounds); an invalid one
    is replaced by the safe action and counted in `invalid_actions`. While the loop runs, the
    interpreter's thread switch interval (`sys.setswitchinterval`) is lowered to 0.5 ms, so a
    thread waiting for a deadline is not held up for Python's default 5 ms by the planner.

    Args:
        robot: a `Robot`.
        controller: an `MPCController` for the robot's model.
        rate_hz: ticks per second; default `1 / robot.period`.
        steps: ticks to run; default until `robot.done` (then the robot must have `done`).
        mode: `"sync"` or `"async"`.
        clock: time source in seconds; default the controller's clock.
        sleep: how to wait (`time.sleep`; a fake clock's sleep in tests).
        on_step: called with the tick index after every tick (progress bars).

    Returns:
        `LoopStats` (with the controller's statistics and `robot.stats()`).

    Raises:
        ValueError: on a non-positive rate, an unknown mode, or `steps=None` for a robot
            without `done`.

    Source: the fixed-rate receding-horizon loop of MPC; the asynchronous planner with a
    time-indexed plan follows MuJoCo MPC (Howell et al. 2022).
    """
    if rate_hz is None:
        rate_hz = 1.0 / float(robot.period)
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"run_control_loop: rate_hz must be > 0; got {rate_hz}")
    if mode not in ("sync", "async"):
        raise ValueError(f"run_control_loop: mode must be 'sync' or 'async'; got {mode!r}")
    if steps is None and not hasattr(robot, "done"):
        raise ValueError("run_control_loop: steps=None needs a robot with a `done` attribute")
    clock = clock or controller.clock
    period = 1.0 / rate_hz
    low = controller.action_low.cpu().numpy().astype(np.float32)
    high = controller.action_high.cpu().numpy().astype(np.float32)
    controller.reset()
    controller.reset_stats()
    limit = sys.maxsize if steps is None else int(steps)
    run = _run_sync if mode == "sync" else _run_async
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, _SWITCH_INTERVAL_S))  # waiting threads get the GIL back sooner
    t_start = clock()
    try:
        sent, overruns, invalid, delays = run(robot, controller, period, limit, clock, sleep, low, high, on_step)
    finally:
        sys.setswitchinterval(switch)
    wall = clock() - t_start
    p50, p95, p99, mx, _ = _percentiles(delays)
    return LoopStats(
        mode=mode, rate_hz=float(rate_hz), period_ms=period * 1e3, steps=sent, wall_s=wall, overruns=overruns,
        invalid_actions=invalid, send_delay_ms_p50=p50, send_delay_ms_p95=p95, send_delay_ms_p99=p99,
        send_delay_ms_max=mx, controller=controller.stats(),
        robot=dict(robot.stats()) if callable(getattr(robot, "stats", None)) else {},
    )


def _run_sync(robot, controller, period, limit, clock, sleep, low, high, on_step):
    sent = overruns = invalid = 0
    delays: list[float] = []
    t0 = clock()
    m = 0
    while m < limit and not getattr(robot, "done", False):
        tick = t0 + m * period
        _sleep_until(tick, clock, sleep)
        obs = robot.read_observation()
        try:
            action = controller.act(obs)
        except ValueError as err:  # a malformed observation: hold a safe action and go on
            logger.warning("run_control_loop: %s", err)
            action = None
        invalid += _send(robot, controller, action, low, high)
        now = clock()
        delays.append((now - tick) * 1e3)
        if now > tick + period:
            overruns += 1
        sent += 1
        m += 1
        if on_step is not None:
            on_step(m)
        if now > t0 + m * period:  # late: skip to the next tick that is still ahead
            m_next = int(math.ceil((now - t0) / period))
            t0 += (m_next - m) * period  # keep the tick index = actions sent
    return sent, overruns, invalid, delays


def _run_async(robot, controller, period, limit, clock, sleep, low, high, on_step):
    c = controller
    cond = threading.Condition()
    # (tick m, observation read at m or None if already filtered, action sent at m, time of the
    # observation, due time of tick m + 1)
    inbox: list[tuple[int, np.ndarray | None, np.ndarray, float, float]] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    policy_actions: dict[int, Tensor] = {}  # tick -> the fallback policy's action for it
    epoch = c._epoch
    n = c._n

    def planner_loop() -> None:
        try:
            while True:
                with cond:
                    while not inbox and not stop.is_set():
                        cond.wait()
                    if stop.is_set():
                        return
                    items = inbox[:]
                    inbox.clear()
                for _, obs, a, _, _ in items:  # catch the belief up with every observation
                    if obs is not None:
                        try:
                            c._filter(obs)
                        except ValueError as err:  # a wrongly shaped observation: predict instead
                            logger.warning("run_control_loop: %s", err)
                            c._n["observation_failures"] += 1
                            c.belief = c._predict(c.belief, c._last_action)
                    c._last_action = torch.as_tensor(a, device=c.device, dtype=torch.float32)[None]
                tick, _, _, t_obs, due = items[-1]
                belief = c._predict(c.belief, c._last_action)  # the belief at tick + 1
                if c.fallback_policy is not None:
                    policy_actions[tick + 1] = c._fallback(tick + 1, belief)
                deadline = due if c.config.budget_ms is None else min(due, t_obs + c.config.budget_ms / 1e3)
                t_plan = clock()
                plan, error = None, None
                try:
                    plan = c._call_planner(belief, tick + 1, c._planner_deadline(deadline))
                except Exception as err:
                    error = err
                done = clock()
                if c._absorb(plan, error, tick + 1, epoch, (done - t_plan) * 1e3) is not None:
                    c._latency_ms.append((done - t_obs) * 1e3)
        except BaseException as err:  # pragma: no cover - re-raised after the loop
            errors.append(err)

    sent = overruns = invalid = 0
    delays: list[float] = []
    # tick 0: no plan exists yet, so it is planned here, synchronously, within half a period
    # (the other half is left to the planner thread for tick 1)
    t_tick0 = clock()
    try:
        c._filter(robot.read_observation())
        plan, error = None, None
        t_plan = clock()
        try:
            plan = c._call_planner(c.belief, 0, c._planner_deadline(t_tick0 + period / 2))
        except Exception as err:
            error = err
        plan = c._absorb(plan, error, 0, epoch, (clock() - t_plan) * 1e3)
    except ValueError as err:  # a malformed first observation
        logger.warning("run_control_loop: %s", err)
        plan = None
    if plan is None:
        n["fallbacks"] += 1
        action = c._fallback(0, c.belief)
    else:
        n["planned"] += 1
        action = plan.actions[0, 0]
    a_np = c._finalize(action).cpu().numpy().astype(np.float32)
    invalid += _send(robot, c, a_np, low, high)
    now = clock()
    c._latency_ms.append((now - t_tick0) * 1e3)
    delays.append((now - t_tick0) * 1e3)
    overruns += int(now > t_tick0 + period)
    n["steps"] += 1
    sent = 1
    if on_step is not None:
        on_step(1)
    thread = threading.Thread(target=planner_loop, name="latentplan-async-planner", daemon=True)
    thread.start()
    with cond:  # the planner starts from tick 0's belief (already filtered) and its action
        inbox.append((0, None, a_np, t_tick0, t_tick0 + period))
        cond.notify()
    m = 1
    try:
        while m < limit and not getattr(robot, "done", False):
            tick = t_tick0 + m * period
            _sleep_until(tick, clock, sleep)
            latest = c._newest()
            if latest is not None and latest[1] == m:
                n["planned"] += 1
                action = c._plan_action_at(m, latest)
            else:
                n["deadline_misses"] += 1
                n["fallbacks"] += 1
                action = policy_actions.get(m)
                if action is None:
                    action = c._plan_action_at(m, latest)
                if action is None:
                    action = c.safe_action
            policy_actions.pop(m, None)
            a_np = c._finalize(action).cpu().numpy().astype(np.float32)
            invalid += _send(robot, c, a_np, low, high)
            t_sent = clock()
            obs = robot.read_observation()
            with cond:
                inbox.append((m, obs, a_np, t_sent, tick + period))
                cond.notify()
            n["steps"] += 1
            delays.append((t_sent - tick) * 1e3)
            if t_sent > tick + period:
                overruns += 1
            sent += 1
            m += 1
            if on_step is not None:
                on_step(m)
            if t_sent > t_tick0 + m * period:  # woke up too late: skip the ticks already past
                m_next = int(math.ceil((t_sent - t_tick0) / period))
                t_tick0 += (m_next - m) * period
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        thread.join(timeout=max(5.0, 10 * period))
    if errors:
        raise errors[0]
    return sent, overruns, invalid, delays


# ------------------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class ControlConfig:
    """`latentplan control`: a planner as the real-time controller of a simulated robot.

    The robot is the checkpoint's dm_control task running in wall-clock time
    (`SimulatedRobot`); one tick of the loop is one model decision.

    Attributes:
        checkpoint: the trained model (`checkpoint.pt` or its run folder).
        rate: control rate in Hz (ticks per wall second).
        mode: `"sync"` (observe, plan, send in each tick) or `"async"` (planning in a
            background thread, actions sent at the fixed rate from the newest plan indexed by
            time; see `run_control_loop`).
        planner: a registry name with optional overrides (`latentplan.compare`), e.g. `cem`,
            `icem:noise_beta=3`, `mppi`, `gradient`.
        budget_evals: size of the planner in model evaluations per decision (`None`: a large
            configuration that only the deadline stops).
        budget_ms: the controller's latency budget per decision in ms. Default: 70 % of the
            period in `sync` mode, none in `async` mode (the next tick is the deadline).
        real_time_factor: simulated seconds per wall second. Default: `rate * action_repeat *
            dt`, so that one tick is one model decision (cartpole at 20 Hz: 20 * 8 * 0.01 = 1.6).
        steps: ticks to run (default: the whole episode).
        seed: episode and planner seed.
        fallback_policy: a distilled policy file (`policy.pt` of `latentplan distill`) that
            answers the decisions the planner cannot; default: the previous plan.
        warmup: plan once before the clock starts (primes the planner and its timing).
        threads: torch threads.
        json: also write the statistics to this JSON file.
    """

    checkpoint: str
    rate: float = 20.0
    mode: Literal["sync", "async"] = "async"
    planner: str = "cem"
    budget_evals: int | None = 3000
    budget_ms: float | None = None
    real_time_factor: float | None = None
    steps: int | None = None
    seed: int = 0
    fallback_policy: str | None = None
    warmup: bool = True
    threads: int = 1
    json: str | None = None
