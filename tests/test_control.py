"""The real-time controller, the control loop and the simulated robot, with exact answers.

Time is a fake clock wherever the outcome would otherwise depend on how fast the machine is:
a "slow" planner advances the fake clock (or blocks until released), and the tests check the
statistics' counts and the actions themselves, never a wall-clock threshold.
"""

import threading

import numpy as np
import pytest
import torch

from latentplan import envs
from latentplan.control import (
    ControllerConfig, MPCController, SimulatedRobot, run_control_loop,
)
from latentplan.planners import CEM, Objective, Plan
from latentplan.worldmodels import AnalyticModel


class FakeClock:
    """A clock that only moves when told: `clock()` is the time, `sleep(dt)` advances it."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)


class Scripted:
    """A planner that replays a script: a `Plan`, an exception to raise, or a function of the call."""

    def __init__(self, script, *, then=None, clock=None, cost_s: float = 0.0):
        self.script = list(script)
        self.then = then
        self.calls = 0
        self.deadlines = []
        self.clock, self.cost_s = clock, cost_s

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        self.calls += 1
        self.deadlines.append(deadline)
        if self.clock is not None:
            self.clock.sleep(self.cost_s)  # the planner "takes" cost_s seconds of fake time
        item = self.script.pop(0) if self.script else self.then
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            return item(state)
        return item


def _plan(values, value=0.0):
    """A `[1, H, 1]` plan with the given actions."""
    a = torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1)
    return Plan(a, torch.tensor([value]), {"iterations": 1, "model_evals": 7, "plan_ms": 0.1})


def _point_model():
    """x' = x + u in 1-D, reward -(x - 0.8)^2, actions in [-0.5, 0.5]."""
    return AnalyticModel(lambda x, u: x + u, lambda x: -((x - 0.8) ** 2).sum(-1), 1, [-0.5], [0.5])


class FakeRobot:
    """A robot over x' = x + u, one decision per tick: the m-th observation is x0 + the sum of
    the first m actions sent (whether the loop sends before or after reading at a tick)."""

    def __init__(self, period: float = 0.05, x0: float = 2.0):
        self.period = period
        self.x0 = np.array([x0], np.float32)
        self.sent: list[np.ndarray] = []
        self.reads = 0

    def read_observation(self):
        x = self.x0 + sum(self.sent[: self.reads], np.zeros(1, np.float32))
        self.reads += 1
        return x.astype(np.float32)

    def send_action(self, action):
        self.sent.append(np.array(action, copy=True))

    def stats(self):
        return {"actions_received": len(self.sent)}


# ------------------------------------------------------------------------------ the controller
def test_controller_is_the_receding_horizon_loop_with_warm_starts():
    """Without a budget, act() is exactly: observe, plan from the shifted previous plan, first action."""
    model = _point_model()
    cem = CEM(horizon=4, iterations=4, candidates=64, elites=8)
    ctrl = MPCController(model, cem, ControllerConfig(seed=3))
    g = torch.Generator().manual_seed(3)
    x_ctrl = x_ref = np.array([2.0], np.float32)
    plan, path = None, []
    for _ in range(5):
        a = ctrl.act(x_ctrl)
        warm = None if plan is None else plan.shift()
        plan = cem.plan(Objective(model), model.from_observation(torch.as_tensor(x_ref)[None]), warm_start=warm, generator=g)
        ref = plan.first_action[0].numpy()
        np.testing.assert_array_equal(a, ref)
        x_ctrl = x_ctrl + a
        x_ref = x_ref + ref
        path.append(float(x_ctrl[0]))
    assert a.dtype == np.float32 and a.shape == (1,)
    s = ctrl.stats()
    assert (s.steps, s.planned, s.fallbacks, s.deadline_misses, s.planner_failures) == (5, 5, 0, 0, 0)
    assert s.model_evals_per_step == 4 * 64 * 4
    assert path[:2] == [pytest.approx(1.5, abs=0.02), pytest.approx(1.0, abs=0.04)]  # full speed towards 0.8


def test_failures_fall_back_to_the_previous_plan_indexed_by_time():
    """A plan at step 0, then a planner that raises, returns NaN actions, a wrong shape."""
    model = _point_model()
    nan_plan = _plan([float("nan"), 0.0, 0.0])
    inf_plan = _plan([0.0, float("inf"), 0.0])
    wrong = Plan(torch.zeros(1, 3, 2), torch.zeros(1))
    planner = Scripted([_plan([0.1, 0.2, 0.3]), RuntimeError("boom"), nan_plan, inf_plan, wrong, "not a plan"],
                       then=RuntimeError("still broken"))
    ctrl = MPCController(model, planner)
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(7)]
    # step 0 planned; steps 1, 2 take the plan's actions 1, 2; later steps hold its last action
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3], rtol=0, atol=1e-7)
    s = ctrl.stats()
    assert (s.steps, s.planned, s.planner_failures, s.fallbacks, s.deadline_misses) == (7, 1, 6, 6, 0)
    # a NaN value alone is not a failure (a planner may not evaluate its plan, e.g. a policy)
    ctrl = MPCController(model, Scripted([], then=lambda s: _plan([0.4], value=float("nan"))))
    assert float(ctrl.act(np.array([0.0], np.float32))[0]) == pytest.approx(0.4)
    assert ctrl.stats().planner_failures == 0


def test_no_plan_at_all_gives_the_safe_action_and_a_policy_fallback_is_preferred():
    model = AnalyticModel(lambda x, u: x + u, lambda x: -(x ** 2).sum(-1), 1, [0.2], [0.9])  # 0 is out of bounds

    ctrl = MPCController(model, Scripted([], then=ValueError("no")))
    assert ctrl.act(np.array([0.0], np.float32)).tolist() == [pytest.approx(0.2)]  # zero clipped into [0.2, 0.9]

    class Policy:
        def act(self, state, *, generator=None, deterministic=False):
            assert deterministic
            return torch.full((state.batch, 1), 0.5) + state.deter * 0.0

    ctrl = MPCController(model, Scripted([_plan([0.7, 0.7])], then=RuntimeError("x")), fallback_policy=Policy())
    got = [float(ctrl.act(np.array([1.0], np.float32))[0]) for _ in range(3)]
    np.testing.assert_allclose(got, [0.7, 0.5, 0.5], atol=1e-7)


def test_actions_outside_the_bounds_are_clipped_and_counted():
    model = _point_model()
    ctrl = MPCController(model, Scripted([], then=lambda s: _plan([3.0, -3.0])))
    a = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(3)]
    assert a == [0.5, 0.5, 0.5]
    assert ctrl.stats().clipped_actions == 3


def test_a_nan_observation_is_predicted_with_the_prior_and_counted():
    model = _point_model()
    ctrl = MPCController(model, Scripted([], then=lambda s: _plan([0.25, 0.25])))
    ctrl.act(np.array([1.0], np.float32))
    ctrl.act(np.array([float("nan")], np.float32))
    assert ctrl.belief.deter.item() == pytest.approx(1.25)  # x + u of the previous step, not NaN
    ctrl.act(None)  # a missing observation: the same open-loop prediction
    assert ctrl.belief.deter.item() == pytest.approx(1.5)
    assert ctrl.stats().observation_failures == 2
    with pytest.raises(ValueError, match="shape"):
        ctrl.act(np.array([1.0, 2.0], np.float32))


def test_reset_with_an_observation_is_not_filtered_twice():
    model = _point_model()
    calls = []
    observe = model.observe
    model.observe = lambda *a, **k: (calls.append(a[2].item()), observe(*a, **k))[1]
    ctrl = MPCController(model, Scripted([], then=lambda s: _plan([0.25])))
    ctrl.reset(np.array([0.3], np.float32))
    ctrl.act(np.array([0.3], np.float32))  # the reset observation again: not filtered twice
    ctrl.act(np.array([0.55], np.float32))
    assert calls == [pytest.approx(0.3), pytest.approx(0.55)]
    ctrl.reset(np.array([0.3], np.float32))
    ctrl.act()  # plans from the reset observation
    assert calls == [pytest.approx(0.3), pytest.approx(0.55), pytest.approx(0.3)]
    with pytest.raises(ValueError, match="no observation"):
        MPCController(model, Scripted([])).act()


def test_inline_mode_counts_a_late_plan_as_a_deadline_miss_and_uses_it():
    clock = FakeClock()
    model = _point_model()
    planner = Scripted([], then=lambda s: _plan([0.4, 0.4]), clock=clock, cost_s=0.120)  # 120 ms > 50 ms budget
    ctrl = MPCController(model, planner, ControllerConfig(budget_ms=50.0, mode="inline", margin_ms=2.0), clock=clock)
    got = [ctrl.act(np.array([0.0], np.float32)) for _ in range(4)]
    s = ctrl.stats()
    assert (s.steps, s.planned, s.deadline_misses, s.late_steps, s.fallbacks) == (4, 4, 4, 4, 0)
    assert all(float(a[0]) == pytest.approx(0.4) for a in got)
    assert s.latency_ms_p50 == pytest.approx(120.0)
    # the planner got the deadline: start + budget - margin (- one iteration: 0.1 ms once measured)
    assert planner.deadlines[0] == pytest.approx(100.0 + 0.050 - 0.002)
    # later calls also keep back one iteration (the plan reported 1 iteration in 0.1 ms)
    assert planner.deadlines[1] == pytest.approx(100.120 + 0.050 - 0.002 - 0.0001, abs=1e-9)


def _stuck_planner() -> tuple["Scripted", threading.Event]:
    """A planner whose first call blocks until the event is set (then plans 0.1, 0.2, 0.3, 0.4)
    and whose later calls raise."""
    release = threading.Event()

    def stuck(state):
        release.wait(10.0)
        return _plan([0.1, 0.2, 0.3, 0.4])

    return Scripted([stuck], then=RuntimeError("broken after the first call")), release


def test_thread_mode_meets_every_deadline_through_the_fallback_while_the_planner_is_stuck():
    """A planner that does not come back: act() answers each step with the fallback, in time."""
    clock = FakeClock()
    model = _point_model()
    planner, release = _stuck_planner()

    class Policy:
        def act(self, state, *, generator=None, deterministic=False):
            return torch.full((state.batch, 1), -0.25)

    ctrl = MPCController(model, planner, ControllerConfig(budget_ms=30.0, mode="thread"), clock=clock,
                         fallback_policy=Policy())
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(4)]
    assert got == [-0.25] * 4
    s = ctrl.stats()
    # one planner call started (the worker stayed busy), every step a miss answered in time
    assert planner.calls == 1
    assert (s.steps, s.planned, s.deadline_misses, s.fallbacks, s.late_steps) == (4, 0, 4, 4, 0)
    release.set()
    ctrl.close()


def test_thread_mode_uses_a_late_plan_by_time_once_it_arrives():
    clock = FakeClock()
    model = _point_model()
    planner, release = _stuck_planner()
    # the fake clock stands still, so each act() waits budget - margin = 0.3 s of real time at most
    ctrl = MPCController(model, planner, ControllerConfig(budget_ms=300.0, mode="thread"), clock=clock)
    first = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(2)]
    assert first == [0.0, 0.0]  # no plan yet: the safe action
    release.set()
    assert ctrl._worker.current.done.wait(10.0)
    later = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(3)]
    # the plan made for step 0 arrived late: steps 2, 3, 4 use its actions 2, 3 and (held) 3
    np.testing.assert_allclose(later, [0.3, 0.4, 0.4], atol=1e-7)
    s = ctrl.stats()
    assert s.deadline_misses == 2 and s.planner_failures == 3 and s.fallbacks == 5 and s.planned == 0
    ctrl.close()


def test_config_is_validated():
    with pytest.raises(ValueError, match="budget_ms"):
        ControllerConfig(budget_ms=-1.0)
    with pytest.raises(ValueError, match="margin_ms"):
        ControllerConfig(budget_ms=1.0, margin_ms=1.0)
    with pytest.raises(ValueError, match="mode"):
        ControllerConfig(mode="fast")
    with pytest.raises(TypeError, match="plan"):
        MPCController(_point_model(), object())


# ------------------------------------------------------------------------------------- the loop
def test_sync_loop_keeps_running_through_raising_and_nan_planners():
    clock = FakeClock()
    robot = FakeRobot(period=0.05, x0=2.0)
    script = [_plan([-0.5, -0.5, -0.5]), RuntimeError("boom"), _plan([float("nan")] * 3), ValueError("bad"),
              _plan([0.5, 9.0, 0.0])]
    ctrl = MPCController(_point_model(), Scripted(script, then=RuntimeError("gone")), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 8, clock=clock, sleep=clock.sleep)
    assert stats.steps == 8 and len(robot.sent) == 8
    sent = [float(a[0]) for a in robot.sent]
    # step 0 planned, 1-3 fall back to plan 0 by time, step 4 planned, 5-7 plan 4 by time (9.0 clipped)
    np.testing.assert_allclose(sent, [-0.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.0, 0.0], atol=1e-7)
    c = stats.controller
    assert (c.planned, c.planner_failures, c.fallbacks, c.clipped_actions) == (2, 6, 6, 1)
    assert stats.invalid_actions == 0 and stats.overruns == 0
    assert all(np.isfinite(a).all() and -0.5 <= a[0] <= 0.5 for a in robot.sent)
    assert clock.t == pytest.approx(100.0 + 7 * 0.05)  # ticks every 50 ms of (fake) time


def test_sync_loop_counts_overruns_and_skips_ticks_that_have_passed():
    clock = FakeClock()
    robot = FakeRobot(period=0.05)
    planner = Scripted([], then=lambda s: _plan([0.0]), clock=clock, cost_s=0.070)  # 70 ms per decision
    ctrl = MPCController(_point_model(), planner, ControllerConfig(budget_ms=40.0, mode="inline"), clock=clock)
    stats = run_control_loop(robot, ctrl, 20.0, 4, clock=clock, sleep=clock.sleep)
    assert stats.steps == 4 and stats.overruns == 4
    assert stats.controller.deadline_misses == 4
    # each decision ends 70 ms after its tick; the next tick is the next 50 ms mark: 100 ms later
    assert clock.t == pytest.approx(100.0 + 3 * 0.100 + 0.070)


def test_async_loop_sends_every_tick_and_survives_a_failing_planner():
    robot = FakeRobot(period=0.01, x0=1.0)
    ctrl = MPCController(_point_model(), Scripted([], then=RuntimeError("always")))
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

    ctrl = MPCController(_point_model(), Scripted([], then=RuntimeError("always")), fallback_policy=Policy())
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
        return _plan([-0.1, -0.1])

    ctrl = MPCController(_point_model(), Scripted([], then=plan))
    stats = run_control_loop(robot, ctrl, 50.0, 6, mode="async")
    assert stats.steps == 6
    assert seen[0] == 1.0  # tick 0 plans from the first observation
    # tick m's plan starts from x_m + a_m: every belief the planner saw lies on the real path
    # (x goes 1.0, 0.9, 0.8, ... while every action is -0.1)
    xs = {round(1.0 - 0.1 * k, 5) for k in range(8)}
    assert set(seen) <= xs and len(seen) >= 2
    c = stats.controller
    assert c.planned + c.deadline_misses == 6 and c.planner_failures == 0


# ----------------------------------------------------------------------------- simulated robot
def test_simulated_robot_on_time_equals_the_env_with_action_repeat():
    """Driven exactly on the tick, the robot is `make(..., action_repeat=8)`: same states, same return."""
    clock = FakeClock(0.0)
    robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=1.6, seed=3, clock=clock)
    assert robot.period == pytest.approx(0.05) and robot.action_repeat == 8
    env = envs.make("dmc:cartpole-swingup", obs="state", seed=3)
    obs_env, _ = env.reset(seed=3)
    np.testing.assert_array_equal(robot.reset(3), obs_env)
    rng = np.random.default_rng(0)
    ret_env = 0.0
    for k in range(6):
        clock.t = k * robot.period
        obs = robot.read_observation()
        np.testing.assert_array_equal(obs, obs_env)
        a = rng.uniform(-1, 1, size=1).astype(np.float32)
        robot.send_action(a)
        obs_env, r, *_ = env.step(a)
        ret_env += r
    clock.t = 6 * robot.period
    np.testing.assert_array_equal(robot.read_observation(), obs_env)
    st = robot.stats()
    assert st["physics_steps"] == 48 and st["return"] == pytest.approx(ret_env, rel=1e-12)


def test_simulated_robot_holds_the_last_action_while_the_controller_is_late():
    clock = FakeClock(0.0)
    robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=1.6, seed=1, clock=clock)
    ref = envs.make("dmc:cartpole-swingup", obs="state", action_repeat=1, seed=1)
    ref.reset(seed=1)
    robot.read_observation()  # starts the clock at t = 0
    robot.send_action(np.array([1.0], np.float32))
    # the controller is silent for three decisions: 24 physics steps at the held action
    clock.t = 3 * robot.period
    obs = robot.read_observation()
    for _ in range(24):
        ref_obs, *_ = ref.step(np.array([1.0], np.float32))
    np.testing.assert_array_equal(obs, ref_obs)
    assert robot.sim_time == pytest.approx(0.24)
    # an action arriving half-way through a physics step is applied from then on: the step gets
    # the time-weighted mean 0.5 * 1 + 0.5 * (-1) = 0
    clock.t += 0.5 * robot.dt / robot.real_time_factor
    robot.send_action(np.array([-1.0], np.float32))
    clock.t += 1.5 * robot.dt / robot.real_time_factor
    obs = robot.read_observation()
    ref.step(np.array([0.0], np.float32))
    ref_obs, *_ = ref.step(np.array([-1.0], np.float32))
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)  # 0.005 s * (1 - 1) in floating point
    # bad actions: NaN and wrong shape rejected (the held one stays), out of bounds clipped
    robot.send_action(np.array([float("nan")]))
    robot.send_action(np.array([0.1, 0.2]))
    robot.send_action(np.array([3.0]))
    st = robot.stats()
    assert (st["actions_rejected"], st["actions_clipped"], st["actions_received"]) == (2, 1, 5)


def test_simulated_robot_checks_its_arguments():
    with pytest.raises(ValueError, match="dm_control"):
        SimulatedRobot("gym:Pendulum-v1")
    with pytest.raises(ValueError, match="real_time_factor"):
        SimulatedRobot(real_time_factor=0.0)
