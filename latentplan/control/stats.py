"""The statistics records of the controller (`ControllerStats`) and of the control loop (`LoopStats`),
and the percentile summary both use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ControllerStats", "LoopStats", "percentiles"]


def percentiles(values: list[float]) -> tuple[float, float, float, float, float]:
    """`(p50, p95, p99, max, mean)` of `values` (`[N]` floats), NaN for each when `values` is empty.

    Percentiles are numpy's linear interpolation between order statistics. Raises nothing.
    """
    if not values:
        nan = float("nan")
        return nan, nan, nan, nan, nan
    v = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(v.max()), float(v.mean())


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


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
            actions, a NaN/inf value, wrong shape); each was answered by the fallback.
        observation_failures: observations rejected after the episode's first good one
            (missing, NaN/inf, a shape other than the model's, or the filter raised); the belief
            was then predicted open-loop with the model's prior (or, with
            `on_bad_observation="raise"`, a `ValueError` raised).
        fallbacks: decisions answered by the fallback (deadline misses of the thread mode and
            the asynchronous loop, planner failures, and non-finite actions).
        late_steps: decisions whose latency exceeded the budget (thread mode: ideally 0; a
            planner holding the GIL in one long C call can still make it late).
        clipped_actions: actions that had to be clipped into the bounds.
        safe_actions: decisions answered by the safe action: no fallback policy answer and no
            plan whose horizon covers the step (e.g. a hung planner's last plan used up), or a
            non-finite action replaced.
        policy_failures: calls of the fallback policy that raised or returned a non-finite or
            wrongly sized action (the newest plan by time, else the safe action, answered).
        nonfinite_returns: candidate returns the planners reported as NaN/inf
            (`Plan.info["nonfinite"]`, summed over all returned plans, used or not).
        latency_ms_p50, latency_ms_p95, latency_ms_p99, latency_ms_max, latency_ms_mean: wall
            milliseconds per decision, from the observation to the action (for the asynchronous
            loop: from reading the observation to the plan for the next tick being ready).
        plan_ms_p50, plan_ms_p99, plan_ms_mean: wall milliseconds of the planner calls that
            completed with a usable plan.
        model_evals_per_step: imagined transitions (`Plan.info["model_evals"]`) of all completed
            planner calls, divided by `steps`.
        iterations_mean: mean `Plan.info["iterations"]` of the completed planner calls.
        budget_ms: the latency budget in ms (`None`: none).
    """

    steps: int
    planned: int
    deadline_misses: int
    planner_failures: int
    observation_failures: int
    fallbacks: int
    late_steps: int
    clipped_actions: int
    safe_actions: int
    policy_failures: int
    nonfinite_returns: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_max: float
    latency_ms_mean: float
    plan_ms_p50: float
    plan_ms_p99: float
    plan_ms_mean: float
    model_evals_per_step: float
    iterations_mean: float
    budget_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A two-column text table of the statistics."""
        pct = lambda n: f"{n} ({100.0 * n / max(self.steps, 1):.1f} %)"  # noqa: E731
        return _rows([
            ("decisions", f"{self.steps}"),
            ("planned in time", pct(self.planned)),
            ("deadline misses", pct(self.deadline_misses)),
            ("planner failures", pct(self.planner_failures)),
            ("fallbacks", pct(self.fallbacks)),
            ("late actions", pct(self.late_steps)),
            ("observation failures", f"{self.observation_failures}"),
            ("clipped actions", f"{self.clipped_actions}"),
            ("safe actions", pct(self.safe_actions)),
            ("fallback policy failures", f"{self.policy_failures}"),
            ("non-finite returns", f"{self.nonfinite_returns}"),
            ("latency p50/p95/p99 ms", f"{self.latency_ms_p50:.1f} / {self.latency_ms_p95:.1f} / {self.latency_ms_p99:.1f}"),
            ("latency max ms", f"{self.latency_ms_max:.1f}"),
            ("budget ms", "none" if self.budget_ms is None else f"{self.budget_ms:.1f}"),
            ("model evals / decision", f"{self.model_evals_per_step:.0f}"),
            ("planner iterations", f"{self.iterations_mean:.1f}"),
        ])


@dataclass(frozen=True)
class LoopStats:
    """What `run_control_loop` measured.

    Attributes:
        mode: `"sync"` or `"async"`.
        rate_hz: control rate in Hz; `period_ms`: 1000 / rate, in ms.
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
        return "\n".join([_rows(rows), self.controller.table()])
