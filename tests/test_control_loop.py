"""`run_control_loop` (latentplan/control/loop.py): the synchronous and asynchronous loops, on fake
clocks and a fake robot with exact answers."""

import numpy as np
import pytest

from control_doubles import FakeClock, FakeRobot, Scripted, make_plan, point_model
from latentplan.control import ControllerConfig, MPCController, run_control_loop


def test_sync_loop_keeps_running_through_raising_and_nan_planners():
    clock = FakeClock()
    robot = FakeRobot(period=0.05, x0=2.0)
    script = [make_plan([-0.5, -0.5, -0.5]), RuntimeError("boom"), make_plan([float("nan")] * 3), ValueError("bad"),
              make_plan([0.5, 9.0, 0.0])]
    ctrl = MPCController(point_model(), Scripted(script, then=RuntimeError("gone")), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 8, clock=clock, sleep=clock.sleep)
    assert stats.steps == 8 and len(robot.sent) == 8
    sent = [float(a[0]) for a in robot.sent]
    # step 0 planned, 1-2 fall back to plan 0 by time, 3 is beyond its horizon: the safe action;
    # step 4 planned, 5-6 plan 4 by time (9.0 clipped), 7 beyond it: the safe action
    np.testing.assert_allclose(sent, [-0.5, -0.5, -0.5, 0.0, 0.5, 0.5, 0.0, 0.0], atol=1e-7)
    c = stats.controller
    assert (c.planned, c.planner_failures, c.fallbacks, c.clipped_actions, c.safe_actions) == (2, 6, 6, 1, 2)
    assert stats.invalid_actions == 0 and stats.overruns == 0
    assert all(np.isfinite(a).all() and -0.5 <= a[0] <= 0.5 for a in robot.sent)
    assert clock.t == pytest.approx(100.0 + 7 * 0.05)  # ticks every 50 ms of (fake) time


def test_sync_loop_counts_overruns_and_skips_ticks_that_have_passed():
    clock = FakeClock()
    robot = FakeRobot(period=0.05)
    planner = Scripted([], then=lambda s: make_plan([0.0]), clock=clock, cost_s=0.070)  # 70 ms per decision
    ctrl = MPCController(point_model(), planner, ControllerConfig(budget_ms=40.0, mode="inline"), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 4, clock=clock, sleep=clock.sleep)
    assert stats.steps == 4 and stats.overruns == 4
    assert stats.controller.deadline_misses == 4
    # each decision ends 70 ms after its tick; the next tick is the next 50 ms mark: 100 ms later
    assert clock.t == pytest.approx(100.0 + 3 * 0.100 + 0.070)


def test_async_loop_sends_every_tick_and_survives_a_failing_planner():
    robot = FakeRobot(period=0.01, x0=1.0)
    ctrl = MPCController(point_model(), Scripted([], then=RuntimeError("always")))
    stats = run_control_loop(robot, ctrl, 100.0, 15, mode="async")
    assert stats.steps == 15 and len(robot.sent) == 15 and stats.invalid_actions == 0
    c = stats.controller
    assert c.steps == 15 and c.planned == 0 and c.fallbacks == 15
    assert all(float(a[0]) == 0.0 for a in robot.sent)  # the safe action throughout


def test_async_loop_falls_back_to_the_policy_for_the_predicted_belief():
    robot = FakeRobot(period=0.05, x0=1.0)

    class Policy:  # a proportional controller towards 0.8 on the belief
        def act(self, state, *, generator=None, deterministic=False):
            return (0.5 * (0.8 - state.deter)).clamp(-0.5, 0.5)

    ctrl = MPCController(point_model(), Scripted([], then=RuntimeError("always")), fallback_policy=Policy())
    stats = run_control_loop(robot, ctrl, 20.0, 6, mode="async")
    xs = [1.0]
    for a in robot.sent[:-1]:
        xs.append(xs[-1] + float(a[0]))
    sent = [float(a[0]) for a in robot.sent]
    # every action is the policy's for the state at its tick (tick 0 from the observation, later
    # ticks from the belief predicted one tick ahead, exact for this model), or, had the planner
    # thread not got to that tick yet, the safe action
    assert sent[0] == pytest.approx(0.5 * (0.8 - 1.0))
    for a, x in zip(sent, xs):
        assert a == pytest.approx(0.5 * (0.8 - x), abs=1e-6) or a == 0.0
    assert stats.controller.fallbacks == 6 and stats.controller.planner_failures >= 1


def test_async_loop_plans_for_the_next_tick_from_the_predicted_belief():
    """The planner thread sees the belief predicted one tick ahead with the action just sent."""
    robot = FakeRobot(period=0.02, x0=1.0)
    seen = []

    def plan(state):
        seen.append(round(state.deter.item(), 5))
        return make_plan([-0.1, -0.1])

    ctrl = MPCController(point_model(), Scripted([], then=plan))
    stats = run_control_loop(robot, ctrl, 50.0, 6, mode="async")
    assert stats.steps == 6
    assert seen[0] == 1.0  # tick 0 plans from the first observation
    # tick m's plan starts from x_m + a_m: every belief the planner saw lies on the real path
    # (x goes 1.0, 0.9, 0.8, ... while every action is -0.1)
    xs = {round(1.0 - 0.1 * k, 5) for k in range(8)}
    assert set(seen) <= xs and len(seen) >= 2
    c = stats.controller
    assert c.planned + c.deadline_misses == 6 and c.planner_failures == 0




def test_async_loop_reads_no_observation_after_its_last_tick():
    robot = FakeRobot(period=0.01, x0=1.0)
    planner = Scripted([], then=lambda s: make_plan([0.0, 0.0]))
    stats = run_control_loop(robot, MPCController(point_model(), planner), 100.0, 5, mode="async")
    # ticks 0-3 read the observation that plans ticks 1-4 (tick 0's plan is made from tick 0's);
    # tick 4 is the last: nothing is read or planned for a tick 5
    assert stats.steps == 5 and robot.reads == 4
    assert 1 <= planner.calls <= 5
    assert stats.controller.planned + stats.controller.deadline_misses == 5


def test_ticks_count_delays_overruns_invalid_actions_and_skip_past_ticks():
    from latentplan.control.loop import Ticks

    clock = FakeClock(10.0)
    robot = FakeRobot(period=0.1)
    ctrl = MPCController(point_model(), Scripted([]))
    ticks = Ticks(robot, ctrl, 0.1, 10, clock, clock.sleep, None)
    assert ticks.wait() == pytest.approx(10.0)
    clock.t += 0.02
    ticks.send(np.array([0.3], np.float32))           # 20 ms after tick 0
    assert ticks.wait() == pytest.approx(10.1) and clock.t == pytest.approx(10.1)
    clock.t += 0.25                                    # tick 1 overruns into tick 3's period
    ticks.send(np.array([float("nan")], np.float32))   # invalid: the safe action goes out
    assert ticks.wait() == pytest.approx(10.4)         # ticks 2 and 3 were skipped
    ticks.send(np.array([0.9], np.float32))            # out of the bounds [-0.5, 0.5]: invalid
    assert (ticks.sent, ticks.overruns, ticks.invalid) == (3, 1, 2)
    np.testing.assert_allclose(ticks.delays_ms, [20.0, 250.0, 0.0], atol=1e-6)
    assert [float(a[0]) for a in robot.sent] == [pytest.approx(0.3), 0.0, 0.0]


def test_the_loops_use_only_the_controllers_public_api():
    """loop.py reads no private member of the controller (`controller._x`, `c._x`)."""
    import ast
    import inspect

    import latentplan.control.loop as loop

    tree = ast.parse(inspect.getsource(loop))
    names = {"controller", "c"}
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if (isinstance(base, ast.Name) and base.id in names) or (isinstance(base, ast.Attribute) and base.attr in names):
                private.append(f"line {node.lineno}: .{node.attr}")
    assert private == []


# ------------------------------------------------------------------------- faults (issue 15)
class _ShapeRobot(FakeRobot):
    """A FakeRobot whose observations from read `bad_from` on (up to `bad_to`) are `[x, x]`."""

    def __init__(self, bad_from: int, bad_to: int = 10**9, **kw):
        super().__init__(**kw)
        self.bad_from, self.bad_to = bad_from, bad_to

    def read_observation(self):
        bad = self.bad_from <= self.reads < self.bad_to
        x = super().read_observation()
        return np.concatenate([x, x]) if bad else x


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_wrong_shape_first_observation_stops_the_loop_after_a_safe_action(mode):
    clock = FakeClock()
    robot = _ShapeRobot(bad_from=0, period=0.05)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.3, 0.3])), clock=clock)
    with pytest.raises(ValueError, match=r"first observation was rejected .*expected shape \(1,\), received \(2,\)"):
        run_control_loop(robot, ctrl, 20.0, 10, mode=mode, clock=clock, sleep=clock.sleep)
    assert [a.tolist() for a in robot.sent] == [[0.0]]  # the safe action went out, nothing else


def test_a_later_wrong_shape_observation_is_counted_and_the_loop_goes_on():
    clock = FakeClock()
    robot = _ShapeRobot(bad_from=3, bad_to=5, period=0.05, x0=0.0)
    seen = []

    def plan(state):
        seen.append(round(state.deter.item(), 5))
        return make_plan([0.1, 0.1])

    ctrl = MPCController(point_model(), Scripted([], then=plan), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 7, clock=clock, sleep=clock.sleep)
    assert stats.steps == 7 and stats.invalid_actions == 0
    assert stats.controller.observation_failures == 2 and stats.controller.planned == 7
    # reads 3 and 4 are rejected: the belief is predicted x + 0.1, exactly the path
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_the_async_loop_stops_at_a_rejected_observation_when_asked_to_raise():
    robot = _ShapeRobot(bad_from=3, period=0.01, x0=0.0)
    ctrl = MPCController(point_model(), Scripted([], then=lambda s: make_plan([0.0] * 50)), on_bad_observation="raise")
    with pytest.raises(ValueError, match=r"observation of shape \(2,\), expected \(1,\)"):
        run_control_loop(robot, ctrl, 100.0, 50, mode="async")
    assert 4 <= len(robot.sent) < 50 and ctrl.stats().observation_failures == 1


def test_the_async_loop_hands_over_to_the_safe_action_and_returns_when_the_planner_hangs():
    """Tick 0's plan (horizon 4) answers ticks 1-3 by time; the planner then hangs: from tick 4
    the safe action goes out, and the loop returns with the call still stuck."""
    import time

    from control_doubles import Hanging

    clock = FakeClock()
    robot = FakeRobot(period=0.05, x0=1.0)
    planner = Hanging(make_plan([0.1, 0.2, 0.3, 0.4]))
    ctrl = MPCController(point_model(), planner, clock=clock)
    t0 = time.perf_counter()
    stats = run_control_loop(robot, ctrl, 20.0, 12, mode="async", clock=clock, sleep=clock.sleep)
    waited = time.perf_counter() - t0
    assert not planner.finished.is_set() and waited < 3.0  # one period (50 ms) of grace, not the hang (30 s)
    np.testing.assert_allclose([float(a[0]) for a in robot.sent], [0.1, 0.2, 0.3, 0.4] + [0.0] * 8, atol=1e-7)
    c = stats.controller
    assert (c.steps, c.planned, c.fallbacks, c.safe_actions) == (12, 1, 11, 8)
    t0 = time.perf_counter()
    ctrl.close()
    assert time.perf_counter() - t0 < 1.0 and not planner.finished.is_set()
    planner.release.set()
    assert planner.finished.wait(10.0)
