"""`MPCController` (latentplan/control/controller.py), with exact answers.

Time is a fake clock wherever the outcome would otherwise depend on how fast the machine is:
a "slow" planner advances the fake clock (or blocks until released), and the tests check the
statistics' counts and the actions themselves, never a wall-clock threshold.
"""

import threading

import numpy as np
import pytest
import torch

from control_doubles import FakeClock, Scripted, make_plan, point_model
from latentplan.control import ControllerConfig, MPCController
from latentplan.planners import CEM, Objective, Plan
from latentplan.worldmodels import AnalyticModel


def test_controller_is_the_receding_horizon_loop_with_warm_starts():
    """Without a budget, act() is exactly: observe, plan from the shifted previous plan, first action."""
    model = point_model()
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
    model = point_model()
    nan_plan = make_plan([float("nan"), 0.0, 0.0])
    inf_plan = make_plan([0.0, float("inf"), 0.0])
    wrong = Plan(torch.zeros(1, 3, 2), torch.zeros(1))
    planner = Scripted([make_plan([0.1, 0.2, 0.3]), RuntimeError("boom"), nan_plan, inf_plan, wrong, "not a plan"],
                       then=RuntimeError("still broken"))
    ctrl = MPCController(model, planner)
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(7)]
    # step 0 planned; steps 1, 2 take the plan's actions 1, 2; later steps hold its last action
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3], rtol=0, atol=1e-7)
    s = ctrl.stats()
    assert (s.steps, s.planned, s.planner_failures, s.fallbacks, s.deadline_misses) == (7, 1, 6, 6, 0)
    # a NaN value alone is not a failure (a planner may not evaluate its plan, e.g. a policy)
    ctrl = MPCController(model, Scripted([], then=lambda s: make_plan([0.4], value=float("nan"))))
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

    ctrl = MPCController(model, Scripted([make_plan([0.7, 0.7])], then=RuntimeError("x")), fallback_policy=Policy())
    got = [float(ctrl.act(np.array([1.0], np.float32))[0]) for _ in range(3)]
    np.testing.assert_allclose(got, [0.7, 0.5, 0.5], atol=1e-7)


def test_actions_outside_the_bounds_are_clipped_and_counted():
    model = point_model()
    ctrl = MPCController(model, Scripted([], then=lambda s: make_plan([3.0, -3.0])))
    a = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(3)]
    assert a == [0.5, 0.5, 0.5]
    assert ctrl.stats().clipped_actions == 3


def test_a_nan_observation_is_predicted_with_the_prior_and_counted():
    model = point_model()
    ctrl = MPCController(model, Scripted([], then=lambda s: make_plan([0.25, 0.25])))
    ctrl.act(np.array([1.0], np.float32))
    ctrl.act(np.array([float("nan")], np.float32))
    assert ctrl.belief.deter.item() == pytest.approx(1.25)  # x + u of the previous step, not NaN
    ctrl.act(None)  # a missing observation: the same open-loop prediction
    assert ctrl.belief.deter.item() == pytest.approx(1.5)
    assert ctrl.stats().observation_failures == 2
    with pytest.raises(ValueError, match="shape"):
        ctrl.act(np.array([1.0, 2.0], np.float32))


def test_reset_with_an_observation_is_not_filtered_twice():
    model = point_model()
    calls = []
    observe = model.observe
    model.observe = lambda *a, **k: (calls.append(a[2].item()), observe(*a, **k))[1]
    ctrl = MPCController(model, Scripted([], then=lambda s: make_plan([0.25])))
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
    model = point_model()
    planner = Scripted([], then=lambda s: make_plan([0.4, 0.4]), clock=clock, cost_s=0.120)  # 120 ms > 50 ms budget
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
        return make_plan([0.1, 0.2, 0.3, 0.4])

    return Scripted([stuck], then=RuntimeError("broken after the first call")), release


def test_thread_mode_meets_every_deadline_through_the_fallback_while_the_planner_is_stuck():
    """A planner that does not come back: act() answers each step with the fallback, in time."""
    clock = FakeClock()
    model = point_model()
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
    model = point_model()
    planner, release = _stuck_planner()
    # the fake clock stands still, so each act() waits budget - margin = 0.3 s of real time at most
    ctrl = MPCController(model, planner, ControllerConfig(budget_ms=300.0, mode="thread"), clock=clock)
    first = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(2)]
    assert first == [0.0, 0.0]  # no plan yet: the safe action
    release.set()
    assert ctrl.wait_idle(10.0)
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
        MPCController(point_model(), object())




# ------------------------------------------------------------------------- the public step API
def test_act_is_filter_plan_record_in_a_row():
    """`act(obs)` gives exactly what its public steps give when called one by one."""
    model = point_model()
    cem = CEM(horizon=4, iterations=3, candidates=32, elites=4)
    whole = MPCController(model, cem, ControllerConfig(seed=5))
    steps = MPCController(model, cem, ControllerConfig(seed=5))
    x = np.array([2.0], np.float32)
    for _ in range(4):
        a = whole.act(x)
        steps.filter(x)
        plan = steps.plan()
        b = steps.record(plan.actions[0, 0], outcome="planned", latency_ms=1.0)
        np.testing.assert_array_equal(a, b)
        x = x + a
    assert steps.belief.deter.item() == whole.belief.deter.item()
    s, t = whole.stats(), steps.stats()
    assert (s.steps, s.planned, s.model_evals_per_step) == (t.steps, t.planned, t.model_evals_per_step) == (4, 4, 3 * 32 * 4)
    assert steps.step == whole.step == 4 and steps.latest[1] == whole.latest[1] == 3


def test_record_counts_each_outcome_and_keeps_actions_in_bounds():
    ctrl = MPCController(point_model(), Scripted([]), ControllerConfig(budget_ms=10.0, mode="inline"))
    sent = [ctrl.record([0.1], outcome="planned", latency_ms=4.0),
            ctrl.record([0.2], outcome="late", latency_ms=12.0),
            ctrl.record([0.9], outcome="missed", latency_ms=9.0),   # clipped to 0.5
            ctrl.record([float("nan")], outcome="failed"),           # the safe action
            ctrl.record([-0.3])]                                     # not a decision: not counted
    assert [float(a[0]) for a in sent] == [pytest.approx(0.1), pytest.approx(0.2), 0.5, 0.0, pytest.approx(-0.3)]
    s = ctrl.stats()
    assert (s.steps, s.planned, s.deadline_misses, s.fallbacks, s.late_steps, s.clipped_actions) == (4, 2, 2, 3, 1, 1)
    assert ctrl.latencies_ms == [4.0, 12.0, 9.0] and ctrl.step == 5
    # the next filter conditions on the last recorded action: x' = x + (-0.3)
    ctrl.filter(np.array([1.0], np.float32))
    assert ctrl.predict().deter.item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="outcome"):
        ctrl.record([0.0], outcome="fine")


def test_predict_leaves_the_belief_and_filter_of_nothing_advances_it():
    model = point_model()
    ctrl = MPCController(model, Scripted([]))
    ctrl.filter(np.array([1.0], np.float32))
    assert ctrl.predict([0.25]).deter.item() == pytest.approx(1.25)
    assert ctrl.belief.deter.item() == pytest.approx(1.0)  # not changed by predict
    ctrl.filter(None, action=[0.5])  # a missing observation after the action 0.5
    assert ctrl.belief.deter.item() == pytest.approx(1.5)
    assert ctrl.stats().observation_failures == 1
    ctrl.filter(np.array([0.2], np.float32), action=[0.5])  # the model observes x directly
    assert ctrl.belief.deter.item() == pytest.approx(0.2)


def test_bad_observations_raise_when_asked():
    ctrl = MPCController(point_model(), Scripted([]), on_bad_observation="raise")
    with pytest.raises(ValueError, match="NaN"):
        ctrl.act(np.array([float("nan")], np.float32))
    with pytest.raises(ValueError, match="missing"):
        ctrl.filter(None)
    with pytest.raises(ValueError, match=r"obs must be \[B=1, n=1\]"):  # the model's own error, passed on
        ctrl.filter(np.array([1.0, 2.0], np.float32))
    assert ctrl.stats().observation_failures == 0
    with pytest.raises(ValueError, match="on_bad_observation"):
        ControllerConfig(on_bad_observation="ignore")


def test_one_episode_generator_draws_filter_plan_and_noise_in_that_order():
    """With `reset(generator=g)` a decision is: posterior sample, plan, noise, all from `g`, as
    PlaNet's agent draws them (the Trainer's numbers depend on this order)."""
    from latentplan.worldmodels import RSSMConfig, RSSMWorldModel

    torch.manual_seed(0)
    model = RSSMWorldModel(RSSMConfig(obs_shape=(3,), action_dim=2, deter=8, stoch=4, hidden=8, embed=8))
    cem = CEM(horizon=3, iterations=2, candidates=8, elites=2)
    ctrl = MPCController(model, cem, ControllerConfig(warm_start=False))
    obs = [np.array([0.1, -0.2, 0.3], np.float32), np.array([0.0, 0.5, -0.1], np.float32)]
    ctrl.reset(generator=torch.Generator().manual_seed(7))
    got = [ctrl.act(o, noise=0.3) for o in obs]
    g = torch.Generator().manual_seed(7)
    belief, last = model.initial(1), torch.zeros(1, 2)
    for k, o in enumerate(obs):
        belief = model.observe(belief, last, torch.as_tensor(o)[None], torch.tensor([k == 0]), generator=g)
        with torch.no_grad():
            a = cem.plan(Objective(model), belief, generator=g).first_action
        a = a + 0.3 * torch.randn(a.shape, generator=g)
        last = torch.maximum(torch.minimum(a, model.action_high), model.action_low)
        np.testing.assert_array_equal(got[k], last[0].numpy())


def test_warmup_primes_the_calling_and_the_planner_thread_and_leaves_the_episode_alone():
    clock = FakeClock()
    threads = []

    def plan(state):
        threads.append(threading.current_thread().name)
        return make_plan([0.1, 0.1])

    planner = Scripted([], then=plan, clock=clock, cost_s=0.004)  # 4 ms, reported as one iteration
    ctrl = MPCController(point_model(), planner, ControllerConfig(budget_ms=20.0), clock=clock)
    assert ctrl.warmup(np.array([1.0], np.float32)) == pytest.approx(4.0)
    main = threading.current_thread().name
    assert threads[0] == main and threads[1].startswith("latentplan-planner") and threads[2] == main
    assert ctrl.iteration_ms == pytest.approx(4.0)
    assert ctrl.stats().steps == 0 and ctrl.latest is None and ctrl.belief.deter.item() == 0.0
    assert ctrl.submit(lambda: threading.current_thread().name).result() == threads[1]  # one planner thread
    ctrl.close()
