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
    # step 0 planned; steps 1, 2 take the plan's actions 1, 2; its horizon (3) is then used up:
    # the safe action, never an action from beyond the plan
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0], rtol=0, atol=1e-7)
    s = ctrl.stats()
    assert (s.steps, s.planned, s.planner_failures, s.fallbacks, s.deadline_misses) == (7, 1, 6, 6, 0)
    assert s.safe_actions == 4


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
    # a later observation of the wrong shape is rejected the same way (counted, predicted)
    ctrl.act(np.array([1.0, 2.0], np.float32))
    assert ctrl.belief.deter.item() == pytest.approx(1.75)
    assert ctrl.stats().observation_failures == 3


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
    # the plan made for step 0 arrived late: steps 2, 3 use its actions 2, 3; step 4 is beyond
    # its horizon of 4: the safe action
    np.testing.assert_allclose(later, [0.3, 0.4, 0.0], atol=1e-7)
    s = ctrl.stats()
    assert s.deadline_misses == 2 and s.planner_failures == 3 and s.fallbacks == 5 and s.planned == 0
    assert s.safe_actions == 3  # steps 0 and 1 (no plan yet) and 4
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
    with pytest.raises(ValueError, match=r"expected shape \(1,\), received \(2,\)"):
        ctrl.filter(np.array([1.0, 2.0], np.float32))
    assert ctrl.stats().observation_failures == 0  # none after a good observation yet
    ctrl.filter(np.array([1.0], np.float32))
    with pytest.raises(ValueError, match=r"step 0: observation of shape \(2,\), expected \(1,\)"):
        ctrl.filter(np.array([1.0, 2.0], np.float32))
    assert ctrl.stats().observation_failures == 1 and ctrl.belief.deter.item() == 1.0  # counted, belief kept
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


# ------------------------------------------------------------------------- faults (issue 15)
def test_a_nonfinite_plan_value_is_a_planner_failure_and_nonfinite_returns_are_counted():
    """A NaN reward: CEM finds no finite return (value -inf, every candidate counted in
    `info["nonfinite"]`); the controller counts a planner failure and the fallback answers."""
    nan_reward = AnalyticModel(lambda x, u: x + u, lambda x: x.sum(-1) * float("nan"), 1, [-0.5], [0.5])
    cem = CEM(horizon=3, iterations=2, candidates=16, elites=4)
    ctrl = MPCController(nan_reward, cem)
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(5)]
    s = ctrl.stats()
    assert got == [0.0] * 5  # no plan ever usable: the safe action
    assert (s.steps, s.planned, s.planner_failures, s.fallbacks, s.safe_actions) == (5, 0, 5, 5, 5)
    assert s.nonfinite_returns == 5 * 2 * 16  # 5 calls x 2 iterations x 16 candidates, all NaN

    # NaN where x > 0.3 only: plans are finite and used, their non-finite candidates still counted
    partial = AnalyticModel(lambda x, u: x + u, lambda x: torch.where(x.sum(-1) > 0.3, float("nan"), -x.sum(-1)),
                            1, [-0.5], [0.5])
    ctrl = MPCController(partial, cem)
    ctrl.act(np.array([0.0], np.float32))
    s = ctrl.stats()
    assert (s.planned, s.planner_failures) == (1, 0) and s.nonfinite_returns > 0

    # +inf and NaN values are failures too; a NaN value the planner marks as not evaluated is not
    unevaluated = make_plan([0.2])
    unevaluated.info["evaluated"] = False
    script = [make_plan([0.1], value=float("inf")), make_plan([0.1], value=float("nan")),
              Plan(unevaluated.actions, torch.tensor([float("nan")]), unevaluated.info)]
    ctrl = MPCController(point_model(), Scripted(script))
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(3)]
    assert got == [0.0, 0.0, pytest.approx(0.2)]
    assert (ctrl.stats().planner_failures, ctrl.stats().planned) == (2, 1)


def test_a_policy_planner_without_a_value_is_used():
    """`PolicyPlanner(horizon=1)` does not evaluate its plan (NaN value, `evaluated: False`)."""
    from latentplan.planners import PolicyPlanner

    class Policy:
        def act(self, state, *, generator=None, deterministic=False):
            return torch.full((state.batch, 1), 0.3)

    ctrl = MPCController(point_model(), PolicyPlanner(Policy()))
    assert float(ctrl.act(np.array([0.0], np.float32))[0]) == pytest.approx(0.3)
    s = ctrl.stats()
    assert (s.planned, s.planner_failures, s.nonfinite_returns) == (1, 0, 0)


@pytest.mark.parametrize("on_bad", ["predict", "raise"])
def test_an_observation_rejected_on_the_first_step_raises_naming_both_shapes(on_bad):
    from latentplan.worldmodels import RSSMConfig, RSSMWorldModel

    torch.manual_seed(0)
    model = RSSMWorldModel(RSSMConfig(obs_shape=(3,), action_dim=2, deter=8, stoch=4, hidden=8, embed=8))
    ctrl = MPCController(model, CEM(horizon=2, iterations=1, candidates=8, elites=2), on_bad_observation=on_bad)
    with pytest.raises(ValueError, match=r"first observation was rejected .*expected shape \(3,\), received \(4,\)"):
        ctrl.act(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"first observation .*NaN.*expected shape \(3,\), received \(3,\)"):
        ctrl.act(np.array([0.0, float("nan"), 0.0], np.float32))
    with pytest.raises(ValueError, match="first observation"):
        ctrl.reset(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="no observation"):
        ctrl.act(None)
    s = ctrl.stats()
    assert (s.steps, s.observation_failures) == (0, 0) and ctrl.step == 0
    ctrl.act(np.zeros(3, np.float32))  # a good observation: the episode starts
    assert ctrl.step == 1 and ctrl.stats().planned == 1


def test_a_later_wrong_shape_is_counted_and_handled_and_the_first_good_shape_is_kept():
    """A model that declares no observation shape: the first accepted observation's is expected
    from then on (across episodes), and checked before the model sees an observation."""

    class Undeclared(AnalyticModel):
        obs_shape = None

    model = Undeclared(lambda x, u: x + u, lambda x: -(x ** 2).sum(-1), 2, [-0.5, -0.5], [0.5, 0.5])
    ctrl = MPCController(model, Scripted([], then=lambda s: Plan(torch.full((1, 2, 2), 0.25), torch.zeros(1))))
    with pytest.raises(ValueError, match=r"expected shape unknown .*received \(3,\)"):  # observe refused it
        ctrl.act(np.zeros(3, np.float32))
    ctrl.act(np.zeros(2, np.float32))
    a = ctrl.act(np.zeros(5, np.float32))  # rejected: counted, the belief predicted open-loop
    np.testing.assert_allclose(ctrl.belief.deter[0].numpy(), [0.25, 0.25])
    assert a.tolist() == [0.25, 0.25] and ctrl.stats().observation_failures == 1
    ctrl.reset()
    with pytest.raises(ValueError, match=r"expected shape \(2,\), received \(5,\)"):  # kept across episodes
        ctrl.act(np.zeros(5, np.float32))


def test_a_failing_fallback_policy_is_counted_and_skipped():
    class Broken:
        def __init__(self):
            self.answers = [RuntimeError("policy broke"), torch.tensor([[float("nan")]]), torch.zeros(1, 3)]

        def act(self, state, *, generator=None, deterministic=False):
            a = self.answers.pop(0)
            if isinstance(a, BaseException):
                raise a
            return a

    planner = Scripted([make_plan([0.1, 0.2, 0.3])], then=RuntimeError("planner broke"))
    ctrl = MPCController(point_model(), planner, fallback_policy=Broken())
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(4)]
    # steps 1-2: the plan by time; step 3: beyond its horizon, the safe action
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.0], atol=1e-7)
    s = ctrl.stats()
    assert (s.policy_failures, s.planner_failures, s.fallbacks, s.safe_actions) == (3, 3, 3, 1)


def test_a_hung_planner_hands_over_to_the_safe_action_and_close_does_not_wait_for_it():
    """Thread mode: a plan at step 0, then a planner that hangs. Its plan answers while its
    horizon lasts, then the safe action does (counted); `close()` returns with the call still
    stuck (it finishes in the background)."""
    import time

    from control_doubles import Hanging

    clock = FakeClock()
    planner = Hanging(make_plan([0.1, 0.2, 0.3]))
    # the fake clock stands still: an act() that waits for the planner waits budget - margin of real time
    ctrl = MPCController(point_model(), planner, ControllerConfig(budget_ms=20.0, mode="thread"), clock=clock)
    got = [float(ctrl.act(np.array([0.0], np.float32))[0]) for _ in range(8)]
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3] + [0.0] * 5, atol=1e-7)
    s = ctrl.stats()
    assert planner.calls == 2  # the hung call was the last one started
    assert (s.steps, s.planned, s.deadline_misses, s.fallbacks, s.safe_actions) == (8, 1, 7, 7, 5)
    t0 = time.perf_counter()
    ctrl.close()
    waited = time.perf_counter() - t0
    assert not planner.finished.is_set() and waited < 5.0  # it did not wait (the call hangs up to 30 s)
    planner.release.set()
    assert planner.finished.wait(10.0)


def test_a_planner_holding_the_gil_makes_actions_late_and_they_are_counted():
    """A Python thread cannot preempt a C call that holds the GIL: thread mode's promise breaks
    (the act() waiting for the budget cannot return until the call ends). The controller does
    not hide it: every late action is counted in `late_steps` (benchmarks/control_gil.py)."""
    from control_doubles import hold_gil

    def plan(state):
        hold_gil(150.0)
        return make_plan([0.1])

    ctrl = MPCController(point_model(), Scripted([], then=plan), ControllerConfig(budget_ms=30.0, mode="thread"))
    for _ in range(4):
        ctrl.act(np.array([0.0], np.float32))
    ctrl.wait_idle(5.0)
    ctrl.close()
    s = ctrl.stats()
    late = [ms for ms in ctrl.latencies_ms if ms > 30.0]
    assert s.late_steps == len(late) >= 1  # at least once the planner thread took the GIL in time
    assert min(late) > 100.0  # late by the hold (150 ms), not by scheduling noise
