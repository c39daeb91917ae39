"""The statistics records of the controller (`ControllerStats`) and of the control loop (`LoopStats`),
and the percentile summary both use."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ControllerStats", "LoopStats", "Window", "percentiles"]

#: how many of the newest values a `Window` keeps for its percentiles by default (at 1 kHz: 100 s)
DEFAULT_WINDOW = 100_000


def percentiles(values: "list[float] | np.ndarray") -> tuple[float, float, float, float, float]:
    """`(p50, p95, p99, max, mean)` of `values` (`[N]` floats), NaN for each when `values` is empty.

    Percentiles are numpy's linear interpolation between order statistics. Raises nothing.
    """
    if len(values) == 0:
        nan = float("nan")
        return nan, nan, nan, nan, nan
    v = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(v.max()), float(v.mean())


class Window:
    """A series of measurements in bounded memory: the newest `capacity` values (`[<= capacity]`
    float64, for percentiles) and the count, sum and maximum of all values ever appended.

    A controller that runs for days appends one latency per decision; keeping every value would
    grow without bound (about 40 bytes a value in a Python list: 3.5 GB a day at 1 kHz). A ring
    buffer of `capacity` float64 costs `8 * capacity` bytes whatever the run's length. Appending
    and reading are guarded by a lock (the planner thread appends while the caller reads).

    Args:
        capacity: values kept for the percentiles, an int >= 1.

    Raises:
        ValueError: `capacity` is not an int >= 1.
    """

    def __init__(self, capacity: int = DEFAULT_WINDOW) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"Window: capacity must be an int >= 1; got {capacity!r}")
        self.capacity = capacity
        self._buf = np.empty(min(capacity, 1024), dtype=np.float64)  # grows to capacity, then wraps
        self._lock = threading.Lock()
        self.count, self.total, self.max = 0, 0.0, float("-inf")

    def append(self, value: float) -> None:
        """Add one value (a float; the caller checks it is finite)."""
        v = float(value)
        with self._lock:
            i = self.count % self.capacity
            if i >= self._buf.size:  # still growing towards capacity
                grown = np.empty(min(self.capacity, 2 * self._buf.size), dtype=np.float64)
                grown[: self._buf.size] = self._buf
                self._buf = grown
            self._buf[i] = v
            self.count += 1
            self.total += v
            self.max = v if v > self.max else self.max

    def values(self) -> np.ndarray:
        """The newest `min(count, capacity)` values, oldest first (a copy)."""
        with self._lock:
            n, cap = self.count, self.capacity
            if n <= cap:
                return self._buf[:n].copy()
            i = n % cap
            return np.concatenate([self._buf[i:cap], self._buf[:i]])

    def __len__(self) -> int:
        return self.count

    def summary(self) -> tuple[float, float, float, float, float]:
        """`(p50, p95, p99, max, mean)`: the percentiles over the kept (newest) values, the max
        and the mean over all values; NaN for each when there is none."""
        with self._lock:
            count, total, mx = self.count, self.total, self.max
        if count == 0:
            nan = float("nan")
            return nan, nan, nan, nan, nan
        p50, p95, p99, _, _ = percentiles(self.values())
        return p50, p95, p99, mx, total / count


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
            loop: from reading the observation to the plan for the next tick being ready). The
            percentiles are over the newest `ControllerConfig.stats_window` decisions (all of
            them in a shorter run), the max and the mean over all (memory stays bounded).
        plan_ms_p50, plan_ms_p99, plan_ms_mean: wall milliseconds of the planner calls that
            completed with a usable plan (percentiles over the newest `stats_window`, the mean
            over all).
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
        wall_s: wall seconds of the loop (a clock that went back has the jump added back, to
            within a period).
        overruns: ticks whose action went out after the tick's period had ended (sync: the
            decision took longer than the period; async: the actuator thread woke up too late).
        invalid_actions: actions from the controller that were not finite `[A]` arrays inside
            the bounds; the loop sent the safe action instead (should be 0).
        send_delay_ms_p50, send_delay_ms_p95, send_delay_ms_p99, send_delay_ms_max: wall ms from
            the tick to the action being sent (percentiles over the newest
            `ControllerConfig.stats_window` ticks, the max over all).
        controller: the controller's `ControllerStats` for this run.
        robot: `robot.stats()` when the robot has it (e.g. the return), else `{}`.
        clock_jumps: times the loop's clock was found to have gone back (a tick due more than a
            period ahead; impossible with a monotonic clock such as `time.perf_counter`); the
            tick schedule was restarted at the current time instead of sleeping the jump.
        stopped_by: `None` after a run that ended normally; in the statistics attached to an
            error (`err.loop_stats`), the error's type name (e.g. `"KeyboardInterrupt"`).
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
    clock_jumps: int = 0
    stopped_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """The loop's and the controller's statistics as a text table."""
        rows = [
            ("mode", self.mode), ("rate", f"{self.rate_hz:g} Hz ({self.period_ms:.1f} ms)"),
            ("actions sent", f"{self.steps}"), ("wall time", f"{self.wall_s:.2f} s"),
            ("overruns", f"{self.overruns}"), ("invalid actions", f"{self.invalid_actions}"),
            ("clock jumps back", f"{self.clock_jumps}"),
            ("send delay p50/p99 ms", f"{self.send_delay_ms_p50:.2f} / {self.send_delay_ms_p99:.2f}"),
        ]
        if self.stopped_by is not None:
            rows.insert(0, ("stopped by", self.stopped_by))
        for k in ("return", "actions_rejected", "actions_clipped", "sim_time_s"):
            if k in self.robot:
                v = self.robot[k]
                rows.append((f"robot {k}", f"{v:.1f}" if isinstance(v, float) else f"{v}"))
        return "\n".join([_rows(rows), self.controller.table()])
