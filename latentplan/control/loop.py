"""The fixed-rate control loop: `run_control_loop` with a synchronous and an asynchronous mode,
both written on `MPCController`'s public step API, sharing one tick bookkeeping (`Ticks`).

Source: the fixed-rate receding-horizon loop of MPC; the asynchronous planner with a
time-indexed plan follows MuJoCo MPC (Howell et al. 2022, "Predictive Sampling: Real-time
Behaviour Synthesis with MuJoCo").
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from typing import Any, Callable, Literal

import numpy as np
from torch import Tensor

from .controller import Clock, MPCController
from .robot import Robot
from .stats import LoopStats, Window

logger = logging.getLogger("latentplan.control")

__all__ = ["AsyncLoop", "SyncLoop", "Ticks", "run_control_loop"]

# The interpreter's thread switch interval while a control loop runs (Python's default is 5 ms:
# a thread waking at its deadline could wait that long for the planner thread to yield the GIL).
_SWITCH_INTERVAL_S = 5e-4


class Ticks:
    """The tick clock and the per-tick bookkeeping of both loops: tick `m` is due at
    `t0 + m * period` (t0: the first `wait()`); every action goes through `send`, which checks
    it, sends it, and counts the send delay, overruns and invalid actions.

    The clock should be monotonic (`time.perf_counter`). With a monotonic clock the next tick
    is never more than one period ahead; if it is, the clock went back (e.g. `time.time` set
    back by NTP): `wait` logs it, counts it in `clock_jumps`, and restarts the schedule at the
    current time instead of sleeping through the jump (the robot would hold its last action
    meanwhile).

    Args:
        robot: the `Robot`.
        controller: the `MPCController` (its bounds and safe action; `config.stats_window`
            bounds the send delays kept for percentiles).
        period: seconds per tick.
        limit: ticks to run at most.
        clock, sleep: time source (s) and how to wait.
        on_step: called with the number of actions sent after every tick.
    """

    def __init__(self, robot: Robot, controller: MPCController, period: float, limit: int, clock: Clock,
                 sleep: Callable[[float], None], on_step: Callable[[int], None] | None) -> None:
        self.robot, self.period, self.limit = robot, period, limit
        self.clock, self.sleep, self.on_step = clock, sleep, on_step
        self.low = controller.action_low.cpu().numpy().astype(np.float32)
        self.high = controller.action_high.cpu().numpy().astype(np.float32)
        self.safe = controller.safe_action.cpu().numpy().astype(np.float32)
        self.t0: float | None = None
        self.sent = self.overruns = self.invalid = self.clock_jumps = 0
        self.jumped_s = 0.0  # seconds the clock went back in all (added back to the loop's wall time)
        self.delays = Window(controller.config.stats_window)
        self._tick = 0.0

    @property
    def delays_ms(self) -> list[float]:
        """The send delays (ms from the tick to the action sent) of the newest
        `stats_window` ticks, oldest first (a copy)."""
        return self.delays.values().tolist()

    @property
    def running(self) -> bool:
        """Whether another tick is due: fewer than `limit` sent and the robot not `done`."""
        return self.sent < self.limit and not getattr(self.robot, "done", False)

    def wait(self) -> float:
        """Sleep until the next tick is due and return its due time (the first tick is now)."""
        if self.t0 is None:
            self.t0 = self.clock()
        self._tick = self.t0 + self.sent * self.period
        now = self.clock()
        dt = self._tick - now
        if dt > self.period + 1e-9:  # only a clock that went back puts a tick this far ahead
            self.clock_jumps += 1
            self.jumped_s += dt - self.period
            logger.warning("control loop: the clock went back by %.3f s; the tick schedule restarts now "
                           "(use a monotonic clock such as time.perf_counter)", dt - self.period)
            self.t0 = now - self.sent * self.period
            self._tick, dt = now, 0.0
        if dt > 0:
            self.sleep(dt)
        return self._tick

    def stop_safely(self) -> BaseException | None:
        """Send the safe action once more, directly to the robot, as the loop stops on an error
        (not counted as a tick). Returns the error `robot.send_action` raised (then logged, as
        the loop's own error is the one to raise), else `None`."""
        try:
            self.robot.send_action(self.safe.copy())
        except Exception as err:  # the robot may be what failed; the original error is raised
            logger.error("control loop: sending the safe action while stopping failed: %s: %s",
                         type(err).__name__, err)
            return err
        return None

    def send(self, action: Any) -> float:
        """Send `action` if it is a finite `[A]` array inside the bounds, else the safe action
        (counted invalid); count the tick, call `on_step`, and skip the ticks already past.
        Returns the clock time after sending."""
        a = np.asarray(action, dtype=np.float32).reshape(-1) if action is not None else None
        bad = (a is None or a.shape != self.low.shape or not np.all(np.isfinite(a))
               or np.any(a < self.low) or np.any(a > self.high))
        self.robot.send_action(self.safe if bad else a)
        now = self.clock()
        self.invalid += int(bad)
        self.delays.append((now - self._tick) * 1e3)
        self.overruns += int(now > self._tick + self.period)
        self.sent += 1
        if self.on_step is not None:
            self.on_step(self.sent)
        if now > self.t0 + self.sent * self.period:  # late: skip to the next tick still ahead
            self.t0 += (math.ceil((now - self.t0) / self.period) - self.sent) * self.period
        return now


class SyncLoop:
    """Each tick: read the observation, `controller.act(obs)` within its budget, send the action.

    The controller answers every fault it can go on from (and counts it); a `ValueError` from it
    means it cannot (an observation rejected before the episode's first good one: there is no
    belief) or was told not to (`on_bad_observation="raise"`): the error is raised, so the loop
    stops rather than run open-loop in silence (`run_control_loop` then sends the safe action).
    """

    def __init__(self, robot: Robot, controller: MPCController, ticks: Ticks) -> None:
        self.robot, self.controller, self.ticks = robot, controller, ticks

    def run(self) -> None:
        """Run the ticks.

        Raises:
            ValueError: from `controller.act` (see the class); whatever the robot or `on_step`
                raise.
        """
        while self.ticks.running:
            self.ticks.wait()
            obs = self.robot.read_observation()
            self.ticks.send(self.controller.act(obs))


class AsyncLoop:
    """Planning on the controller's planner thread (`controller.submit`, one
    `ThreadPoolExecutor(max_workers=1)`) while this thread sends at the fixed rate.

    At tick `m` this thread sends the newest plan's action for time `m` (a plan made for tick
    `k`: its action `m - k`) and reads the observation (a copy is kept: a driver may reuse its
    buffer before the planner thread filters it). A planner job then catches the belief
    up with every observation read since the last job (`controller.filter(obs, action)`),
    predicts the belief at tick `m + 1` with the action just sent (`controller.predict`), and
    plans for tick `m + 1` with that tick as the deadline (capped at `budget_ms` after the
    observation). A job starts as soon as the previous one ends and an observation is waiting.
    A plan not ready by its tick is a deadline miss, answered by the fallback policy's action
    for the predicted belief (when the controller has one), else by the newest plan indexed by
    time while its horizon lasts, else the safe action. Tick 0 is planned on the planner thread
    too, and this thread waits for it half a period at most (no earlier plan exists): a planner
    that overruns its deadline or hangs at tick 0 is a deadline miss answered by the fallback, as
    at any other tick. After the last tick nothing is read or planned.

    Shutting down takes at most one period after the last tick, even when the planner is stuck:
    the job in flight gets one period to end (a healthy one ends by its deadline, the next
    tick), then it is left to finish in the background (Python cannot stop a thread); its plan
    is not used.

    Raises (from `run`): a `ValueError` from tick 0's observation (rejected before any good
    one); whatever a planner job raised outside the controller's own guards (e.g. a rejected
    observation with `on_bad_observation="raise"`), after the tick that follows it was sent
    (`run_control_loop` then sends the safe action); whatever the robot or `on_step` raise.
    """

    def __init__(self, robot: Robot, controller: MPCController, ticks: Ticks) -> None:
        self.robot, self.controller, self.ticks = robot, controller, ticks
        self._lock = threading.RLock()  # a callback of a job already done runs in the submitting thread
        self._waiting: list[tuple[int, np.ndarray | None, np.ndarray, float, float]] = []
        self._job: Future | None = None
        self._stopped = False
        self._errors: list[BaseException] = []
        self._sent_before: np.ndarray | None = None  # the action before the next observation to filter
        self.policy_actions: dict[int, Tensor] = {}  # tick -> the fallback policy's action for it

    # ------------------------------------------------------------ planner side (one job at a time)
    def _catch_up(self, items: list[tuple[int, np.ndarray | None, np.ndarray, float, float]]) -> None:
        """Filter the waiting observations, predict the next tick's belief and plan for it."""
        c = self.controller
        for _, obs, sent, _, _ in items:
            if obs is not None:  # a rejected observation is counted and predicted (or raises) in filter
                c.filter(obs, action=self._sent_before)
            self._sent_before = sent
        tick, _, _, t_obs, due = items[-1]
        belief = c.predict(self._sent_before)  # the belief at tick + 1
        if c.fallback_policy is not None:
            self.policy_actions[tick + 1] = c.fallback(tick + 1, belief)
        budget = c.config.budget_ms
        deadline = due if budget is None else min(due, t_obs + budget / 1e3)
        c.plan(belief, step=tick + 1, deadline=deadline, observed_at=t_obs)

    def _start(self) -> None:
        """Submit a job for the waiting observations (the lock is held)."""
        items, self._waiting = self._waiting, []
        self._job = self.controller.submit(self._catch_up, items)
        self._job.add_done_callback(self._done)

    def _error(self) -> BaseException | None:
        """The first error of a planner job, if any (a job is done before its callback runs, so
        the newest job is asked too)."""
        if self._errors:
            return self._errors[0]
        job = self._job
        return job.exception() if job is not None and job.done() and not job.cancelled() else None

    def _done(self, job: Future) -> None:
        if not job.cancelled() and job.exception() is not None:
            self._errors.append(job.exception())
        with self._lock:
            if self._waiting and not self._stopped and self._error() is None:  # after an error: no more jobs
                self._start()

    def _push(self, item: tuple) -> None:
        with self._lock:
            self._waiting.append(item)
            if (self._job is None or self._job.done()) and self._error() is None:
                self._start()

    # ------------------------------------------------------------ actuator side
    def _tick0(self, t_tick0: float) -> np.ndarray:
        """Tick 0 (due at `t_tick0`): filter here, plan on the planner thread and wait for the
        plan until half a period after the tick, record. A plan not ready by then is a deadline
        miss answered by the fallback (its job stays the one in flight: the next job starts when
        it ends). Raises the filter's `ValueError` for a rejected first observation."""
        c, t = self.controller, self.ticks
        belief = c.filter(self.robot.read_observation())
        deadline = t_tick0 + t.period / 2
        fallback = c.fallback(0, belief)  # ready before waiting, as in the controller's thread mode
        with self._lock:
            job = self._job = c.submit(lambda: c.plan(belief, step=0, deadline=deadline))
        job.add_done_callback(self._done)
        wait_for([job], timeout=max(0.0, min(deadline - t.clock(), t.period / 2)))
        if not job.done():
            action, outcome = fallback, "missed"
        else:
            plan = job.result()
            action, outcome = (fallback, "failed") if plan is None else (plan.actions[0, 0], "planned")
        return c.record(action, outcome=outcome, latency_ms=(t.clock() - t_tick0) * 1e3)

    def _action(self, m: int) -> np.ndarray:
        """The action of tick `m` from the newest plan or the fallback, recorded."""
        c = self.controller
        latest = c.latest
        policy = self.policy_actions.pop(m, None)
        if latest is not None and latest[1] == m:
            return c.record(c.action_at(m, latest), outcome="planned")
        action = policy if policy is not None else c.action_at(m, latest)
        return c.record(c.safe_action if action is None else action, outcome="missed")

    def run(self) -> None:
        """Run the ticks (see the class)."""
        t = self.ticks
        if not t.running:  # steps=0, or the robot is already done
            return
        try:
            tick = t.wait()
            a = self._tick0(tick)
            t_sent = t.send(a)
            if t.running:
                self._push((0, None, a, t_sent, tick + t.period))
            while t.running and self._error() is None:
                tick = t.wait()
                a = self._action(t.sent)
                t_sent = t.send(a)
                if not t.running:  # no plan for a tick that will not come
                    break
                obs = _snapshot(self.robot.read_observation())  # it waits: the driver may reuse its buffer
                self._push((t.sent - 1, obs, a, t_sent, tick + t.period))
        finally:
            with self._lock:
                self._stopped = True
                job = self._job
            if job is not None:  # one period at most: a stuck job is left to finish in the background
                wait_for([job], timeout=t.period)
        error = self._error()
        if error is not None:
            raise error


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
    `t0 + m / rate_hz`; a tick that ends after later ticks were due skips them.

    - `mode="sync"` (`SyncLoop`): at each tick read the observation, `controller.act(obs)`
      (within the controller's budget), send the action. The action goes out one decision
      latency after the observation; give the controller a `budget_ms` below the period.
    - `mode="async"` (`AsyncLoop`): planning runs in a background thread while actions go out
      at the fixed rate from the newest plan indexed by time, as MuJoCo MPC does. The
      controller's `mode` is not used here.

    Every action sent is checked (finite, `[A]`, inside the controller's bounds); an invalid one
    is replaced by the safe action and counted in `invalid_actions`. When the loop stops on an
    error (of the controller, the robot, `on_step`, or a `KeyboardInterrupt`), the safe action is
    sent once more before the error propagates (if that send fails too, it is logged and the
    original error raised), and the statistics so far are attached as `err.loop_stats`
    (`stopped_by` set). After a normal end the robot holds the last action sent. While the loop
    runs, `sys.setswitchinterval` is lowered to 0.5 ms (a thread waiting for a deadline is not
    held up for Python's default 5 ms by the planner).

    Args:
        robot: a `Robot` (`done`, when it has one, a bool attribute or property).
        controller: an `MPCController` for the robot's model.
        rate_hz: ticks per second (Hz), a finite number > 0; default `1 / robot.period`.
        steps: ticks to run, an int >= 0; default until `robot.done` (which it must then have).
        mode: `"sync"` or `"async"`.
        clock: time source in seconds, monotonic (a clock that goes back is counted in
            `clock_jumps` and the schedule restarts); default the controller's clock.
        sleep: how to wait (`time.sleep`; a fake clock's sleep in tests).
        on_step: called with the number of actions sent after every tick (progress bars).

    Returns:
        `LoopStats` (with the controller's statistics and `robot.stats()`), within one period of
        the last tick even when the planner is stuck (see `AsyncLoop`).

    Raises:
        ValueError: a `rate_hz` that is not a finite number > 0 (or, without `rate_hz`, a
            `robot.period` that is not a finite number > 0), `steps` not an int >= 0 or `None`,
            an unknown mode, `steps=None` for a robot without `done`, or a `done` that is a
            method; from the controller:
            an observation rejected before the episode's first good one, or any with
            `on_bad_observation="raise"`. Any error of the robot, `on_step` or the controller,
            and `KeyboardInterrupt`, passes through, with the safe action sent (above).

    Source: the fixed-rate receding-horizon loop of MPC; the asynchronous time-indexed plan: MuJoCo MPC (Howell 2022).
    """
    rate_hz = _checked_rate(robot, rate_hz, steps, mode)
    clock = clock or controller.clock
    period = 1.0 / rate_hz
    controller.reset()
    controller.reset_stats()
    ticks = Ticks(robot, controller, period, sys.maxsize if steps is None else int(steps), clock, sleep, on_step)
    loop = SyncLoop(robot, controller, ticks) if mode == "sync" else AsyncLoop(robot, controller, ticks)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, _SWITCH_INTERVAL_S))  # waiting threads get the GIL back sooner
    t_start = clock()
    try:
        loop.run()
    except BaseException as err:  # KeyboardInterrupt included: the actuator must not keep the last action
        ticks.stop_safely()
        try:
            err.loop_stats = _loop_stats(mode, rate_hz, ticks, controller, t_start, type(err).__name__)
        except Exception:  # noqa: BLE001 - statistics are a courtesy here; the error is what matters
            pass
        raise
    finally:
        sys.setswitchinterval(switch)
    return _loop_stats(mode, rate_hz, ticks, controller, t_start, None)


def _checked_rate(robot: Robot, rate_hz: Any, steps: Any, mode: Any) -> float:
    """`run_control_loop`'s argument checks; returns the rate in Hz (default `1 / robot.period`)."""

    def positive(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, numbers.Real) and math.isfinite(x) and x > 0

    if rate_hz is None:
        period = getattr(robot, "period", None)
        if not positive(period):
            raise ValueError(f"run_control_loop: without rate_hz the robot's period (s) must be a finite number "
                             f"> 0; got robot.period = {period!r}")
        rate_hz = 1.0 / float(period)
    if not positive(rate_hz):
        raise ValueError(f"run_control_loop: rate_hz must be a finite number > 0 (Hz); got {rate_hz!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0):
        raise ValueError(f"run_control_loop: steps must be an int >= 0 or None; got {steps!r}")
    if mode not in ("sync", "async"):
        raise ValueError(f"run_control_loop: mode must be 'sync' or 'async'; got {mode!r}")
    if steps is None and not hasattr(robot, "done"):
        raise ValueError("run_control_loop: steps=None needs a robot with a `done` attribute")
    if callable(getattr(robot, "done", None)):  # a method is always truthy: the loop would run no tick
        raise ValueError("run_control_loop: robot.done must be a bool attribute or property (the episode is over), "
                         "not a method")
    return float(rate_hz)


def _snapshot(obs: Any) -> Any:
    """A copy of an observation that waits for the planner thread: a driver may hand out one
    buffer and overwrite it at the next read. Something that cannot be copied as an array is
    passed on as it is (the filter rejects it)."""
    if obs is None:
        return None
    if isinstance(obs, Tensor):
        return obs.detach().clone()
    try:
        return np.array(obs, copy=True)
    except (TypeError, ValueError):
        return obs


def _loop_stats(mode: str, rate_hz: float, ticks: Ticks, controller: MPCController, t_start: float,
                stopped_by: str | None) -> LoopStats:
    """The `LoopStats` of a run so far (`stopped_by`: the error's name when it stopped on one;
    then a failing `robot.stats()` is reported in the robot's dict instead of raised)."""
    robot = ticks.robot
    p50, p95, p99, mx, _ = ticks.delays.summary()
    try:
        robot_stats = dict(robot.stats()) if callable(getattr(robot, "stats", None)) else {}
    except Exception as err:  # noqa: BLE001 - only swallowed while stopping on another error
        if stopped_by is None:
            raise
        robot_stats = {"error": f"{type(err).__name__}: {err}"}
    return LoopStats(
        mode=mode, rate_hz=rate_hz, period_ms=ticks.period * 1e3, steps=ticks.sent,
        wall_s=ticks.clock() - t_start + ticks.jumped_s, overruns=ticks.overruns, invalid_actions=ticks.invalid,
        send_delay_ms_p50=p50, send_delay_ms_p95=p95, send_delay_ms_p99=p99, send_delay_ms_max=mx,
        controller=controller.stats(), robot=robot_stats, clock_jumps=ticks.clock_jumps, stopped_by=stopped_by,
    )
