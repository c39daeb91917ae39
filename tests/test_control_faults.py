"""Faults of the real-time control loop found by probing it as a user (session 12): errors and
Ctrl-C mid-run, planner diagnostics that are not numbers, degenerate rates and step counts, a
clock that goes back, a planner that hangs from its first call in the asynchronous loop, inputs
that are not numbers, statistics that grew without bound or counted a stale planner call.

Every test runs on the fake clock and the test doubles of `control_doubles.py`; none asserts a
wall-clock time (a test whose fix is missing fails on a count or an action, never on a timer).
"""

import json
import threading

import numpy as np
import pytest

from control_doubles import FakeClock, FakeRobot, Scripted, make_plan, point_model
from latentplan.control import ControlConfig, ControllerConfig, MPCController, run_control_loop
from latentplan.control.stats import Window


class _FailingRobot(FakeRobot):
    """A FakeRobot that raises `exc` at its `at`-th observation read (0-based)."""

    def __init__(self, at: int, exc: type, **kw):
        super().__init__(**kw)
        self.at, self.exc = at, exc

    def read_observation(self):
        if self.reads == self.at:
            self.reads += 1
            raise self.exc("the operator pressed Ctrl-C" if self.exc is KeyboardInterrupt else "sensor bus down")
        return super().read_observation()


# ------------------------------------------------------------------------- stopping on an error
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_an_interrupt_or_an_error_mid_run_sends_the_safe_action_and_keeps_the_statistics(mode, exc):
    clock = FakeClock()
    robot = _FailingRobot(3, exc, period=0.05, x0=2.0)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([-0.5] * 20)), clock=clock)
    with pytest.raises(exc) as info:
        run_control_loop(robot, ctrl, 20.0, 10, mode=mode, clock=clock, sleep=clock.sleep)
    sent = [float(a[0]) for a in robot.sent]
    # sync reads before it sends (3 ticks done when read 3 fails); async sends tick m, then reads
    ticks = 3 if mode == "sync" else 4
    assert sent == [-0.5] * ticks + [0.0]  # the planned actions, then the safe action once more
    stats = info.value.loop_stats
    assert stats.stopped_by == exc.__name__ and stats.steps == ticks and stats.controller.steps == ticks
    assert stats.invalid_actions == 0 and stats.robot == {"actions_received": ticks + 1}
    assert "stopped by" in stats.table()
    ctrl.close()


def test_when_the_robot_cannot_take_the_safe_action_either_the_first_error_is_raised():
    class Broken(FakeRobot):
        def send_action(self, action):
            if len(self.sent) >= 2:
                raise ConnectionError(f"actuator gone (action {float(action[0])})")
            super().send_action(action)

    clock = FakeClock()
    robot = Broken(period=0.05)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.3] * 5)), clock=clock)
    with pytest.raises(ConnectionError, match=r"action 0\.3") as info:  # the tick's action, not the safe one
        run_control_loop(robot, ctrl, 20.0, 5, clock=clock, sleep=clock.sleep)
    assert info.value.loop_stats.steps == 2 and info.value.loop_stats.stopped_by == "ConnectionError"


def test_an_interrupt_from_on_step_also_leaves_the_safe_action_on_the_robot():
    clock = FakeClock()
    robot = FakeRobot(period=0.05)

    def on_step(n):
        if n == 2:
            raise KeyboardInterrupt

    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.4] * 5)), clock=clock)
    with pytest.raises(KeyboardInterrupt):
        run_control_loop(robot, ctrl, 20.0, 5, clock=clock, sleep=clock.sleep, on_step=on_step)
    assert [float(a[0]) for a in robot.sent] == [pytest.approx(0.4), pytest.approx(0.4), 0.0]


def test_the_cli_prints_and_writes_the_statistics_after_ctrl_c_and_closes_the_planner(monkeypatch, tmp_path, capsys):
    import latentplan.cli.control as cli

    class Robot(_FailingRobot):
        def reset(self, seed=None):
            return self.x0.copy()

    robot = Robot(4, KeyboardInterrupt, period=0.01, x0=1.0)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.2] * 5)))
    monkeypatch.setattr(cli, "_controller", lambda cfg: (robot, ctrl, "a fake robot"))
    out = tmp_path / "stats.json"
    monkeypatch.setattr(cli.torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    code = cli.run(ControlConfig(checkpoint="unused", rate=100.0, mode="sync", steps=10, warmup=False,
                                 json=str(out)))
    assert code == 130
    assert float(robot.sent[-1][0]) == 0.0 and len(robot.sent) == 5  # 4 ticks, then the safe action
    saved = json.loads(out.read_text())["stats"]
    assert saved["stopped_by"] == "KeyboardInterrupt" and saved["steps"] == 4
    assert "stopped by" in capsys.readouterr().out
    assert ctrl._executor is None  # closed


# ------------------------------------------------------------------------- planner diagnostics
@pytest.mark.parametrize("info", [{"plan_ms": float("nan")}, {"plan_ms": float("inf")}, {"plan_ms": -50.0},
                                  {"plan_ms": "fast"}, {"iterations": float("nan")}, {"iterations": -1},
                                  {"iterations": "many"}, {"iterations": True}])
def test_planner_info_that_is_not_a_finite_count_cannot_poison_later_deadlines(info):
    """Before the fix, a NaN `plan_ms` made the iteration-time estimate NaN for good (every later
    deadline NaN: a checked planner raises on it, every decision failed), an infinite one put
    every deadline at -inf, and a string made `act` raise."""
    clock = FakeClock()

    def odd(state):
        p = make_plan([0.1] * 5)
        p.info.update(info)
        return p

    planner = Scripted([odd], then=lambda s: make_plan([0.1] * 5))  # later plans: 1 iteration in 0.1 ms
    ctrl = MPCController(point_model(), planner, ControllerConfig(budget_ms=20.0, mode="inline"), clock=clock)
    for _ in range(3):
        ctrl.act(np.array([0.0], np.float32))
    # start + budget - margin - one iteration: the odd plan gave no estimate (0 ms: the fake
    # clock measured none), the next one reported 1 iteration in 0.1 ms
    assert planner.deadlines[1:] == [pytest.approx(100.0 + 0.020 - 0.001, abs=1e-9),
                                     pytest.approx(100.0 + 0.020 - 0.001 - 0.0001, abs=1e-9)]
    assert ctrl.iteration_ms == pytest.approx(0.1)
    s = ctrl.stats()
    assert (s.planned, s.planner_failures, s.iterations_mean) == (3, 0, 1.0)


def test_negative_counts_in_planner_info_are_not_subtracted():
    p = make_plan([0.1] * 3)
    p.info.update(model_evals=-70, nonfinite=-3)
    ctrl = MPCController(point_model(), Scripted([p], then=lambda s: make_plan([0.1] * 3)))
    ctrl.act(np.array([0.0], np.float32))
    ctrl.act(np.array([0.0], np.float32))
    s = ctrl.stats()
    assert s.nonfinite_returns == 0 and s.model_evals_per_step == 7 / 2  # only the sane plan's 7 evaluations


# ------------------------------------------------------------------------- rates and step counts
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_steps_zero_sends_nothing_and_bad_steps_or_rates_are_named(mode):
    clock = FakeClock()
    robot = FakeRobot(period=0.05)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.1] * 5)), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 0, mode=mode, clock=clock, sleep=clock.sleep)
    assert stats.steps == 0 and robot.sent == [] and robot.reads == 0  # async sent one action before the fix
    for steps in (-3, 2.7, "3", True):
        with pytest.raises(ValueError, match="steps must be an int >= 0 or None"):
            run_control_loop(robot, ctrl, 20.0, steps, mode=mode, clock=clock, sleep=clock.sleep)
    for rate in (0.0, -5.0, float("nan"), float("inf"), "20", True):
        with pytest.raises(ValueError, match="rate_hz must be a finite number > 0"):
            run_control_loop(robot, ctrl, rate, 3, mode=mode, clock=clock, sleep=clock.sleep)
    for period in (0.0, -0.05, float("nan"), None):  # 0 was a ZeroDivisionError
        with pytest.raises(ValueError, match=r"robot's period .* got robot.period = "):
            run_control_loop(FakeRobot(period=period), ctrl, None, 3, mode=mode, clock=clock, sleep=clock.sleep)
    assert robot.sent == []


# ------------------------------------------------------------------------- the clock
class _JumpingClock(FakeClock):
    """A fake clock set back by `back` seconds when the robot gets its `at`-th action."""

    def __init__(self):
        super().__init__(1000.0)
        self.slept = []

    def sleep(self, dt):
        self.slept.append(dt)
        super().sleep(dt)


def test_a_clock_that_goes_back_restarts_the_schedule_instead_of_sleeping_through_the_jump():
    clock = _JumpingClock()

    class Robot(FakeRobot):
        def send_action(self, action):
            super().send_action(action)
            if len(self.sent) == 3:
                clock.t -= 3600.0  # the wall clock is set back one hour

    robot = Robot(period=0.05)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.1] * 5)), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 6, clock=clock, sleep=clock.sleep)
    assert stats.steps == 6 and stats.clock_jumps == 1
    assert max(clock.slept) == pytest.approx(0.05)  # before the fix: one sleep of 3600.05 s
    assert stats.wall_s == pytest.approx(5 * 0.05, abs=0.051)  # the jump is added back, to within a period


def test_thread_mode_waits_no_longer_than_the_budget_when_the_clock_goes_back():
    """The deadline is set from the clock's first reading; the clock then goes back an hour. The
    wait for the planner is capped at the budget: the step is a miss answered by the fallback
    (before the fix `act` waited for the planner however long it took)."""
    readings = iter([100.0])

    def clock():
        return next(readings, 100.0 - 3600.0)

    release = threading.Event()

    def slow(state):
        release.wait(30.0)
        return make_plan([0.4] * 3)

    ctrl = MPCController(point_model(), Scripted([], then=slow), ControllerConfig(budget_ms=20.0, mode="thread"),
                         clock=clock)
    a = ctrl.act(np.array([0.0], np.float32))
    release.set()
    assert float(a[0]) == 0.0  # the safe action: nothing else covered step 0
    s = ctrl.stats()
    assert (s.deadline_misses, s.planned) == (1, 0)
    ctrl.close(timeout=5.0)


# ------------------------------------------------------------------------- the asynchronous loop's tick 0
def test_the_async_loop_answers_tick_0_by_the_fallback_when_the_first_planner_call_hangs():
    """Tick 0 used to be planned in the actuator's thread: a planner hanging on its first call
    held every tick (and the robot at its previous action) until it returned."""
    release, finished = threading.Event(), threading.Event()

    class Hang:
        calls = 0

        def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
            Hang.calls += 1
            release.wait(30.0)
            finished.set()
            return make_plan([0.3] * 4)

    clock = FakeClock()
    robot = FakeRobot(period=0.05)
    ctrl = MPCController(point_model(), Hang(), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 8, mode="async", clock=clock, sleep=clock.sleep)
    assert not finished.is_set() and Hang.calls == 1  # returned with the call still stuck
    assert [float(a[0]) for a in robot.sent] == [0.0] * 8
    c = stats.controller
    assert (c.steps, c.planned, c.deadline_misses, c.fallbacks, c.safe_actions) == (8, 0, 8, 8, 8)
    release.set()
    assert finished.wait(10.0)
    ctrl.close(timeout=5.0)


def test_the_async_loop_uses_a_late_tick_0_plan_by_time():
    """Tick 0's plan arrives after tick 0 was answered by the fallback: later ticks use it by time."""
    release = threading.Event()
    calls = []

    def plan(state):
        calls.append(1)
        if len(calls) == 1:
            release.wait(30.0)
            return make_plan([0.1, 0.2, 0.3, 0.4, 0.5])
        raise RuntimeError("no more plans")

    clock = FakeClock()

    class Robot(FakeRobot):
        def send_action(self, action):
            super().send_action(action)
            if len(self.sent) == 1:  # tick 0 went out without a plan: let it arrive now
                release.set()

    robot = Robot(period=0.05)
    ctrl = MPCController(point_model(), Scripted([], then=plan), clock=clock)
    real_submit = ctrl.submit
    jobs = []
    ctrl.submit = lambda fn, *a: jobs.append(real_submit(fn, *a)) or jobs[-1]

    def on_step(n):
        if n == 1:
            jobs[0].result(timeout=10.0)  # the late plan for tick 0 is in before tick 1

    stats = run_control_loop(robot, ctrl, 20.0, 6, mode="async", clock=clock, sleep=clock.sleep, on_step=on_step)
    sent = [float(a[0]) for a in robot.sent]
    assert sent[0] == 0.0  # tick 0: the safe action (nothing else existed)
    np.testing.assert_allclose(sent[1:5], [0.2, 0.3, 0.4, 0.5], atol=1e-7)  # the late plan by time
    assert sent[5] == 0.0  # beyond its horizon
    assert stats.controller.planned == 0 and stats.controller.deadline_misses == 6
    ctrl.close(timeout=5.0)


# ------------------------------------------------------------------------- inputs that are not numbers
@pytest.mark.parametrize("bad", [np.array(["a"]), np.array([object()], dtype=object), "0.5", {"x": 1},
                                 np.array([1 + 2j])])
def test_observations_that_are_not_real_numbers_are_rejected_not_raised(bad):
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.1] * 5)))
    with pytest.raises(ValueError, match="first observation was rejected"):
        ctrl.act(bad)
    ctrl.act(np.array([0.0], np.float32))
    a = ctrl.act(bad)  # before the fix: TypeError out of act (the loop stopped)
    assert float(a[0]) == pytest.approx(0.1)
    assert ctrl.belief.deter.item() == pytest.approx(0.1)  # predicted open-loop: 0 + 0.1
    assert ctrl.stats().observation_failures == 1


def test_filter_predict_and_record_name_a_bad_action_or_latency():
    ctrl = MPCController(point_model(), Scripted([]))
    ctrl.filter(np.array([0.0], np.float32))
    with pytest.raises(ValueError, match=r"filter: action must be \[A=1\]; got 2"):
        ctrl.filter(np.array([0.3], np.float32), action=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"predict: action holds NaN/inf"):
        ctrl.predict([float("nan")])  # was: a NaN belief, and every later plan failed on it
    with pytest.raises(ValueError, match=r"predict: action must be \[A=1\] numbers; got str"):
        ctrl.predict("left")
    for bad in (float("nan"), float("inf"), "3", True):
        with pytest.raises(ValueError, match="latency_ms must be a finite number"):
            ctrl.record([0.1], outcome="planned", latency_ms=bad)
    assert ctrl.stats().steps == 0 and ctrl.belief.deter.item() == 0.0


def test_config_names_fields_that_are_not_numbers():
    for kw, field in (({"budget_ms": "30"}, "budget_ms"), ({"budget_ms": True}, "budget_ms"),
                      ({"margin_ms": None}, "margin_ms"), ({"seed": 1.5}, "seed"),
                      ({"stats_window": 0}, "stats_window"), ({"stats_window": 2.0}, "stats_window")):
        with pytest.raises(ValueError, match=f"ControllerConfig.{field} must be"):
            ControllerConfig(**kw)


# ------------------------------------------------------------------------- statistics
def test_window_keeps_the_newest_values_in_order_and_totals_all_of_them():
    w = Window(3)
    assert np.isnan(w.summary()).all() and w.values().tolist() == []
    for v in (5.0, 1.0, 9.0, 2.0, 4.0):
        w.append(v)
    assert w.values().tolist() == [9.0, 2.0, 4.0] and len(w) == 5
    p50, p95, p99, mx, mean = w.summary()
    assert (p50, mx, mean) == (4.0, 9.0, 21.0 / 5)
    assert p99 == pytest.approx(np.percentile([9.0, 2.0, 4.0], 99))
    big = Window(5000)  # grows past its first allocation
    for v in range(12000):
        big.append(float(v))
    assert big.values().tolist() == [float(v) for v in range(7000, 12000)] and big.max == 11999.0
    with pytest.raises(ValueError, match="capacity"):
        Window(0)


def test_latency_statistics_match_numpy_over_a_bounded_window():
    """200 decisions of random planner cost, window 50: the percentiles are numpy's over the
    newest 50 latencies, the max and mean over all 200, the miss count over all 200; memory holds
    50 values (a long run no longer grows the statistics without bound)."""
    rng = np.random.default_rng(0)
    costs = list(rng.exponential(0.01, size=200))
    clock = FakeClock()

    def plan(state):
        clock.sleep(costs.pop(0))
        return make_plan([0.1] * 3)

    ctrl = MPCController(point_model(), Scripted([], then=plan),
                         ControllerConfig(budget_ms=15.0, mode="inline", stats_window=50), clock=clock)
    observed = []
    for _ in range(200):
        t0 = clock()
        ctrl.act(np.array([0.0], np.float32))
        observed.append((clock() - t0) * 1e3)
    s = ctrl.stats()
    v = np.array(observed)
    np.testing.assert_allclose(ctrl.latencies_ms, v[-50:])
    np.testing.assert_allclose([s.latency_ms_p50, s.latency_ms_p95, s.latency_ms_p99],
                               np.percentile(v[-50:], [50, 95, 99]))
    assert s.latency_ms_max == pytest.approx(v.max()) and s.latency_ms_mean == pytest.approx(v.mean())
    assert s.steps == 200 and s.deadline_misses == s.late_steps == int((v > 15.0).sum())
    assert s.plan_ms_mean == pytest.approx(v.mean()) and s.plan_ms_p50 == pytest.approx(np.percentile(v[-50:], 50))


def test_loop_send_delays_are_kept_in_the_same_bounded_window():
    from latentplan.control.loop import Ticks

    clock = FakeClock(10.0)
    ctrl = MPCController(point_model(), Scripted([]), stats_window=4)
    ticks = Ticks(FakeRobot(period=0.1), ctrl, 0.1, 100, clock, clock.sleep, None)
    for k in range(10):
        ticks.wait()
        clock.t += 0.001 * k  # tick k goes out k ms late
        ticks.send(np.array([0.0], np.float32))
    np.testing.assert_allclose(ticks.delays_ms, [6.0, 7.0, 8.0, 9.0], atol=1e-6)
    assert ticks.delays.max == pytest.approx(9.0) and len(ticks.delays) == 10


def test_a_planner_call_started_before_reset_stats_is_not_counted_after_it():
    """A call left running by an earlier run fails after the statistics were zeroed: the new
    statistics do not count it (before the fix: one planner failure before any decision)."""
    release = threading.Event()
    calls = []

    def plan(state):
        calls.append(1)
        if len(calls) == 2:
            release.wait(30.0)
            raise RuntimeError("the old call came back")
        return make_plan([0.1] * 50)

    clock = FakeClock()
    ctrl = MPCController(point_model(), Scripted([], then=plan), ControllerConfig(budget_ms=20.0), clock=clock)
    stats = run_control_loop(FakeRobot(period=0.05), ctrl, 20.0, 3, clock=clock, sleep=clock.sleep)
    assert len(calls) == 2 and stats.controller.deadline_misses == 2  # the second call is stuck
    ctrl.reset_stats()
    release.set()
    assert ctrl.wait_idle(10.0)
    s = ctrl.stats()
    assert (s.steps, s.planner_failures, len(ctrl.latencies_ms)) == (0, 0, 0)
    ctrl.close()


# ------------------------------------------------------------------------- robots that differ from the doubles
def test_the_async_loop_filters_the_value_read_at_each_tick_from_a_driver_that_reuses_its_buffer():
    """A driver that returns one array, overwritten at every read (shared memory, ROS messages):
    an observation waiting for the planner thread was filtered with a later reading (before the
    fix: reads 2 and 3 filtered as 4). The planner here blocks until three more ticks were read,
    so observations wait, and the robot's 7th read waits until they were filtered, whatever the
    machine's speed (no timer decides the outcome)."""

    class BufferRobot(FakeRobot):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.buf = np.zeros(1, np.float32)

        def read_observation(self):
            self.buf[:] = float(self.reads)  # the k-th read reports k
            self.reads += 1
            return self.buf

    model = point_model()
    seen = []
    observe = model.observe

    filtered = threading.Event()

    def spy(belief, action, obs, is_first, **kw):
        seen.append(float(obs.reshape(-1)[0]))
        if len(seen) >= 5:
            filtered.set()
        return observe(belief, action, obs, is_first, **kw)

    model.observe = spy
    reads_to_wait_for = threading.Event()

    class Robot(BufferRobot):
        def read_observation(self):
            if self.reads == 6:  # keep the loop alive until reads 1-4 were filtered
                filtered.wait(10.0)
            obs = super().read_observation()
            if self.reads >= 5:
                reads_to_wait_for.set()
            return obs

    robot = Robot(period=0.05)
    calls = []

    def plan(state):
        calls.append(1)
        if len(calls) == 2:  # the job for tick 1 waits until reads 2-4 have happened
            reads_to_wait_for.wait(10.0)
        return make_plan([0.0] * 10)

    clock = FakeClock()
    ctrl = MPCController(model, Scripted([], then=plan), clock=clock)
    run_control_loop(robot, ctrl, 20.0, 8, mode="async", clock=clock, sleep=clock.sleep)
    ctrl.submit(lambda: None).result(timeout=10.0)  # the planner thread is done with its jobs
    assert seen == [float(k) for k in range(len(seen))] and len(seen) >= 5  # each reading as it was read
    ctrl.close(timeout=5.0)


def test_a_robot_whose_done_is_a_method_is_named_not_run_for_zero_ticks():
    class Robot(FakeRobot):
        def done(self):
            return False

    ctrl = MPCController(point_model(), Scripted([]))
    with pytest.raises(ValueError, match=r"robot.done must be a bool"):
        run_control_loop(Robot(period=0.05), ctrl, 20.0, 10)


def test_plan_names_a_deadline_observed_at_or_step_that_is_not_one():
    """These are the caller's errors: before the fix a NaN or string deadline was passed on and
    counted as a planner failure on every call."""
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.1] * 3)))
    ctrl.filter(np.array([0.0], np.float32))
    for kw, name in (({"deadline": float("nan")}, "deadline"), ({"deadline": "soon"}, "deadline"),
                     ({"observed_at": float("nan")}, "observed_at"), ({"step": -1}, "step"), ({"step": 1.5}, "step")):
        with pytest.raises(ValueError, match=f"MPCController.plan: {name} must be"):
            ctrl.plan(**kw)
    assert ctrl.stats().planner_failures == 0
    assert ctrl.plan(deadline=float("inf"), step=0) is not None  # +inf: no effective deadline
