"""The capture-ready path (issue 7): the static search a CUDA graph records gives the same plans as
the eager loop, runs without host synchronisation, and the fused RSSM step computes the same
function. GPU-only checks (graph replay, `torch.cuda.set_sync_debug_mode`) skip without CUDA."""

import dataclasses

import pytest
import torch

import latentplan as lp
from latentplan.planners.capture import HostSyncError, no_host_sync, objective_key, resolve_compile
from latentplan.worldmodels import FusedRSSM, LatentState

CUDA = torch.cuda.is_available()


def _model(action_dim: int = 2, seed: int = 0) -> lp.RSSMWorldModel:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        lp.RSSMConfig(deter=24, stoch=6, hidden=24, embed=24), obs_shape=(5,), action_dim=action_dim,
        obs_names=(("x", 0, 1), ("v", 1, 2)),
    )
    return lp.RSSMWorldModel(cfg).eval()


def _state(b: int = 3, seed: int = 1, device: str = "cpu") -> LatentState:
    g = torch.Generator().manual_seed(seed)
    return LatentState(torch.randn(b, 24, generator=g), torch.randn(b, 6, generator=g)).to(device)


@lp.reward
def _chase(obs, action, ctx):
    return -(obs["x"] - ctx["target"]) ** 2 - 0.1 * (action**2).sum(-1)


def _objective(model, target, b=3):
    return lp.Objective(model, rewards=[_chase, 0.5 * lp.learned_reward()], context={"target": target}, batch=b)


CEM_OPTIONS = [
    {},
    dict(noise_beta=2.0, keep_elites=0.3, population_decay=1.25, momentum=0.1, include_mean=True, return_best=True),
    dict(refit="mppi", temperature=0.5, keep_elites=0.2),
]


@pytest.mark.parametrize("options", CEM_OPTIONS, ids=["planet", "icem", "mppi"])
def test_static_cem_gives_the_eager_plan(options):
    model = _model()
    state = _state()
    base = dict(horizon=6, iterations=4, candidates=40, elites=6, **options)
    eager, static = lp.CEM(compile="eager", **base), lp.CEM(compile="static", **base)
    gen_e, gen_s = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    warm = None
    for target in (torch.tensor([0.5, -0.2, 0.0]), torch.tensor([-1.0, 0.3, 0.7])):
        # a fresh objective each call, as a control loop builds it: the capture is reused and the
        # new context values reach it
        pe = eager.plan(_objective(model, target), state, generator=gen_e, warm_start=warm)
        ps = static.plan(_objective(model, target), state, generator=gen_s, warm_start=warm)
        assert torch.equal(pe.actions, ps.actions)
        assert torch.equal(pe.value, ps.value)
        assert ps.info["model_evals"] == pe.info["model_evals"] and ps.info["iterations"] == pe.info["iterations"]
        assert (pe.info["compile"], ps.info["compile"]) == ("eager", "static")
        warm = pe.shift()
    assert len(static._cache) == 1  # one capture served both calls
    # the two generators were advanced identically
    assert torch.equal(torch.rand(3, generator=gen_e), torch.rand(3, generator=gen_s))


def test_static_cem_with_a_fused_model_matches_within_float_tolerance():
    model = _model()
    fused = FusedRSSM(model)
    state = _state()
    base = dict(horizon=6, iterations=3, candidates=40, elites=6)
    pe = lp.CEM(compile="eager", **base).plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(2))
    ps = lp.CEM(compile="static", **base).plan(lp.Objective(fused), state, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ps.actions, pe.actions, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ps.value, pe.value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "options", [dict(optimizer="adam"), dict(use_mean=True, squash="clip", grad_clip=1.0, optimizer="sgd")], ids=["adam-tanh", "sgd-clip-mean"]
)
def test_static_gradient_planner_gives_the_eager_plan(options):
    model = _model()
    state = _state()
    base = dict(horizon=5, iterations=6, restarts=4, **options)
    pe = lp.GradientPlanner(compile="eager", **base).plan(_objective(model, 0.3), state, generator=torch.Generator().manual_seed(3))
    planner = lp.GradientPlanner(compile="static", **base)
    gen = torch.Generator().manual_seed(3)
    ps = planner.plan(_objective(model, 0.3), state, generator=gen)
    assert torch.equal(pe.actions, ps.actions) and torch.equal(pe.value, ps.value)
    assert ps.info["grad_norm_first"] == pe.info["grad_norm_first"] and ps.info["iterations"] == base["iterations"]
    assert ps.info["model_evals"] == pe.info["model_evals"]


def test_cem_search_has_no_host_sync():
    model = _model()
    state = _state()
    cem = lp.CEM(horizon=5, iterations=3, candidates=30, elites=5, noise_beta=2.0, keep_elites=0.3, include_mean=True,
                 return_best=True, population_decay=1.25)
    mean, std = torch.zeros(3, 5, 2), torch.ones(3, 5, 2)
    with no_host_sync():
        out = cem._search(_objective(model, 0.2), state, mean, std, model.action_low, model.action_high,
                          torch.Generator().manual_seed(0), None, converge=False)  # as captured modes run it
    assert out[0].shape == (3, 5, 2) and out[3] == 3 and out[5] == "iterations"


def test_gradient_ascent_has_no_host_sync():
    from latentplan.planners.ascent import ascend

    model = _model()
    state = _state().expand(2)
    init = torch.zeros(6, 5, 2)
    # SGD: torch's Adam reads its step count on the host unless built with capturable=True,
    # which PyTorch allows on CUDA only (what compile="cuda_graph" does)
    with no_host_sync():
        out = ascend(_objective(model, 0.2), state, init, iterations=3, lr=0.1, optimizer="sgd", squash="tanh",
                     grad_clip=1.0, low=model.action_low, high=model.action_high, generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (6, 5, 2) and out.steps == 3


def test_no_host_sync_catches_a_reward_that_reads_a_value():
    model = _model()

    @lp.reward
    def peeks(obs, action, ctx):
        scale = 2.0 if obs["x"].mean().item() > 0 else 1.0  # a host sync, and a branch on it
        return scale * obs["x"]

    cem = lp.CEM(horizon=3, iterations=2, candidates=10, elites=2)
    with pytest.raises(HostSyncError, match="item"):
        with no_host_sync():
            cem._search(lp.Objective(model, rewards=[peeks]), _state(), torch.zeros(3, 3, 2), torch.ones(3, 3, 2),
                        model.action_low, model.action_high, None, None)
    with pytest.raises(HostSyncError, match="boolean mask"):
        with no_host_sync():
            x = torch.randn(4)
            x[x > 0]


def test_compile_modes_resolve_and_refuse_clearly():
    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu, planner="CEM") == "eager"
    assert resolve_compile("auto", torch.device("cuda"), planner="CEM") == "cuda_graph"
    assert resolve_compile("auto", torch.device("cuda"), planner="CEM", not_capturable="why") == "eager"
    with pytest.raises(ValueError, match="needs the beliefs on a CUDA device"):
        resolve_compile("cuda_graph", cpu, planner="CEM")
    with pytest.raises(ValueError, match="cannot be used with these settings: gradient"):
        lp.CEM(compile="static", horizon=3, iterations=2, candidates=10, elites=2, gradient={"iterations": 1}).plan(
            lp.Objective(_model()), _state())
    with pytest.raises(ValueError, match="CEMConfig.compile"):
        lp.CEMConfig(compile="graph")
    with pytest.raises(ValueError, match="GradientConfig.compile"):
        lp.GradientConfig(compile=None)
    plan = lp.CEM(horizon=3, iterations=2, candidates=10, elites=2).plan(lp.Objective(_model()), _state())
    assert plan.info["compile"] == "eager"  # the CPU default is the eager loop


def test_objective_key_is_structural_for_learned_terms_and_by_identity_for_user_terms():
    model = _model()
    k1 = objective_key(lp.Objective(model, rewards=[0.5 * lp.learned_reward()], context={"t": torch.zeros(1)}))
    k2 = objective_key(lp.Objective(model, rewards=[0.5 * lp.learned_reward()], context={"t": torch.ones(1)}))
    k3 = objective_key(lp.Objective(model, rewards=[0.25 * lp.learned_reward()], context={"t": torch.ones(1)}))
    k4 = objective_key(lp.Objective(model, rewards=[lp.reward(lambda o, a, c: o["x"])], context={"t": torch.ones(1)}))
    k5 = objective_key(lp.Objective(model, rewards=[0.5 * lp.learned_reward()], context={"t": torch.ones(2, 1)}, batch=2))
    assert k1 == k2 and len({k1, k3, k4, k5}) == 4


def test_fused_rssm_is_the_same_function():
    model = _model(action_dim=3)
    fused = FusedRSSM(model)
    state = LatentState(torch.randn(16, 24), torch.randn(16, 6))
    actions = torch.rand(16, 7, 3) * 2 - 1
    with torch.no_grad():
        v1, f1 = model.rollout(state, actions, generator=torch.Generator().manual_seed(4))
        v2, f2 = fused.rollout(state, actions, generator=torch.Generator().manual_seed(4))
        s1 = model.imagine_step(state, actions[:, 0], generator=torch.Generator().manual_seed(4))
        s2 = fused.imagine_step(state, actions[:, 0], generator=torch.Generator().manual_seed(4))
        m1 = model.imagine_step(state, actions[:, 0], sample=False)
        m2 = fused.imagine_step(state, actions[:, 0], sample=False)
    for a, b in [(v1.deter, v2.deter), (v1.stoch, v2.stoch), (f1.stoch, f2.stoch), (s1.stoch, s2.stoch), (m1.stoch, m2.stoch)]:
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
    # visited row n * H + t is step t of sequence n, and the last visited row is the final state
    torch.testing.assert_close(v1.deter.reshape(16, 7, -1)[:, -1], f1.deter)
    # the fused weights follow the model's parameters
    with torch.no_grad():
        model.gru.weight_hh.mul_(0.5)
        model.prior_out.bias.add_(0.1)
        v3, _ = model.rollout(state, actions, generator=torch.Generator().manual_seed(4))
        v4, _ = fused.rollout(state, actions, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(v4.stoch, v3.stoch, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(v3.stoch, v1.stoch)
    # bf16 matrix products: close, not equal
    with torch.no_grad():
        v5, _ = FusedRSSM(model, precision="bf16").rollout(state, actions, generator=torch.Generator().manual_seed(4))
    err = (v5.deter - v3.deter).abs().max().item()
    assert 0 < err < 0.05
    # everything else is the wrapped model's
    assert fused.action_dim == 3 and torch.equal(fused.reward(f1), model.reward(f1))
    with pytest.raises(TypeError, match="RSSMWorldModel"):
        FusedRSSM(lp.AnalyticModel.linear([[1.0]], [[1.0]], [[1.0]]))
    with pytest.raises(ValueError, match="precision"):
        FusedRSSM(model, precision="fp16")


def test_batched_returns_equal_stepwise_returns():
    """Objective.returns over the model's rollout (rewards for all N*H rows in one call, with a
    per-environment context) equals stepping the objective H times."""
    model = _model()
    b, j, h = 3, 4, 5
    obj = lp.Objective(model, rewards=[_chase, lp.learned_reward()], discount=0.9,
                       context={"target": torch.tensor([0.5, -0.5, 0.1])}, batch=b, value=lambda s: s.deter.sum(-1))
    start = _state(b).expand(j)
    actions = torch.rand(b * j, h, 2) * 2 - 1
    with torch.no_grad():
        batched = obj.returns(start, actions, generator=torch.Generator().manual_seed(0))
        gen, s, total, scale = torch.Generator().manual_seed(0), start, torch.zeros(b * j), 1.0
        for t in range(h):
            s, r = obj.step(s, actions[:, t], generator=gen)
            total, scale = total + scale * r, scale * 0.9
        total = total + scale * obj.bootstrap(s)
    torch.testing.assert_close(batched, total, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile_mode_matches_eager():
    model = _model()
    state = _state()
    base = dict(horizon=4, iterations=2, candidates=20, elites=4)
    pe = lp.CEM(compile="eager", **base).plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(1))
    pc = lp.CEM(compile="torch_compile", **base).plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pc.actions, pe.actions, atol=1e-4, rtol=1e-4)
    # the counts come from the traced Python of the search (dynamo replays its side effects)
    assert (pc.info["model_evals"], pc.info["iterations"]) == (pe.info["model_evals"], pe.info["iterations"])


# ------------------------------------------------------------------------------------------ GPU only
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("options", CEM_OPTIONS, ids=["planet", "icem", "mppi"])
def test_cuda_graph_cem_replays_the_eager_plan(options):
    model = _model().cuda()
    state = _state(device="cuda")
    base = dict(horizon=6, iterations=4, candidates=40, elites=6, **options)
    eager, graph = lp.CEM(compile="eager", **base), lp.CEM(compile="cuda_graph", **base)
    gen_e = torch.Generator(device="cuda").manual_seed(5)
    gen_g = torch.Generator(device="cuda").manual_seed(5)
    for target in (torch.tensor([0.5, -0.2, 0.0]), torch.tensor([-1.0, 0.3, 0.7])):
        pe = eager.plan(_objective(model, target.cuda()), state, generator=gen_e)
        pg = graph.plan(_objective(model, target.cuda()), state, generator=gen_g)
        torch.testing.assert_close(pg.actions, pe.actions, atol=1e-4, rtol=1e-4)
        assert pg.info["compile"] == "cuda_graph"
    assert len(graph._cache) == 1


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_replay_does_not_sync():
    model = _model().cuda()
    state = _state(device="cuda")
    cem = lp.CEM(compile="cuda_graph", horizon=6, iterations=4, candidates=40, elites=6)
    gen = torch.Generator(device="cuda").manual_seed(0)
    obj = lp.Objective(model)
    cem.plan(obj, state, generator=gen)  # capture
    runner, _ = next(iter(cem._cache._entries.values()))
    inputs = {k: v.clone() for k, v in runner.static.items()}
    torch.cuda.set_sync_debug_mode("error")
    try:
        runner(inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_gradient_planner_replays_the_eager_plan():
    model = _model().cuda()
    state = _state(device="cuda")
    base = dict(horizon=5, iterations=6, restarts=4, optimizer="adam")
    pe = lp.GradientPlanner(compile="eager", **base).plan(
        lp.Objective(model), state, generator=torch.Generator(device="cuda").manual_seed(3))
    pg = lp.GradientPlanner(compile="cuda_graph", **base).plan(
        lp.Objective(model), state, generator=torch.Generator(device="cuda").manual_seed(3))
    torch.testing.assert_close(pg.actions, pe.actions, atol=1e-3, rtol=1e-3)


def test_a_failed_auto_capture_falls_back_to_the_eager_loop_and_an_explicit_one_raises():
    from latentplan.planners.capture import CaptureCache

    cache = CaptureCache()
    with pytest.raises(RuntimeError, match="boom"):
        cache.fall_back("CEM", "cuda_graph", RuntimeError("boom"))
    assert cache.failed is None
    with pytest.warns(RuntimeWarning, match="planning eagerly from now on"):
        assert cache.fall_back("CEM", "auto", RuntimeError("boom")) == "eager"
    assert "boom" in cache.failed
    # later calls of that planner resolve "auto" to the eager loop without trying again
    assert resolve_compile("auto", torch.device("cuda"), planner="CEM", not_capturable=cache.failed) == "eager"


def test_reward_caches_are_bypassed_while_a_graph_is_recorded(monkeypatch):
    """A replay runs no Python: a per-environment context expanded (and cached) during warm-up
    would be baked into the graph and never see the values `StaticObjective.load` copies in."""
    model = _model()
    obj = _objective(model, torch.tensor([0.5, -0.2, 0.0]))
    ctx = obj.context
    first = ctx.expand(12, torch.device("cpu"))["target"]
    assert ctx.expand(12, torch.device("cpu"))["target"] is first  # cached outside a capture
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    during = ctx.expand(12, torch.device("cpu"))["target"]
    assert during is not first and torch.equal(during, first)  # recomputed: the graph records the expansion
    state = _state()
    assert ctx.decode(state) is not None and ctx._decoded[2] is None  # no versions: never served from cache


def test_no_host_sync_flags_indexed_assignment_of_python_values():
    x = torch.zeros(4)
    with pytest.raises(HostSyncError, match="indexed assignment"):
        with no_host_sync():
            x[0] = 1.0
    with no_host_sync():
        x[1:3] = torch.ones(2)  # a device tensor: no host round trip
    assert x.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_captured_modes_refuse_context_values_they_cannot_refresh():
    model = _model()
    obj = lp.Objective(model, rewards=[lp.learned_reward()], context={"targets": [torch.zeros(1)]})
    with pytest.raises(ValueError, match="context\\['targets'\\] is a list"):
        objective_key(obj)
    with pytest.raises(ValueError, match="is a list"):
        lp.CEM(compile="static", horizon=3, iterations=2, candidates=10, elites=2).plan(obj, _state())
    plan = lp.CEM(compile="eager", horizon=3, iterations=2, candidates=10, elites=2).plan(obj, _state())
    assert plan.actions.shape == (3, 3, 2)


def test_a_capture_that_does_not_reproduce_the_eager_plan_is_refused(monkeypatch):
    from latentplan.planners.capture import CaptureMismatch, CapturedSearch

    real_call = CapturedSearch.__call__

    def drifting(self, inputs):  # a capture that missed something: its plan is off by 0.01
        out = real_call(self, inputs)
        return {k: v + 0.01 if v.is_floating_point() else v for k, v in out.items()}

    monkeypatch.setattr(CapturedSearch, "__call__", drifting)
    cem = lp.CEM(compile="static", horizon=3, iterations=2, candidates=10, elites=2)
    with pytest.raises(CaptureMismatch, match="'mean' differs by up to 0.01"):
        cem.plan(lp.Objective(_model()), _state(), generator=torch.Generator().manual_seed(0))
    grad = lp.GradientPlanner(optimizer="adam", compile="static", horizon=3, iterations=2, restarts=2)
    with pytest.raises(CaptureMismatch, match="GradientPlanner"):
        grad.plan(lp.Objective(_model()), _state(), generator=torch.Generator().manual_seed(0))


def test_static_cem_honours_the_budget():
    """A captured search runs the static count `planned_iterations` (min of `iterations` and what
    `max_evals` allows) and, without the convergence stop it cannot take, gives the eager plan."""
    model = _model()
    state = _state()
    base = dict(horizon=6, iterations=40, candidates=40, elites=6, max_evals=4 * 6 * 40 + 5, tol=0.0)
    pe = lp.CEM(compile="eager", **base).plan(_objective(model, torch.tensor([0.5, -0.2, 0.0])), state,
                                              generator=torch.Generator().manual_seed(5))
    ps = lp.CEM(compile="static", **base).plan(_objective(model, torch.tensor([0.5, -0.2, 0.0])), state,
                                               generator=torch.Generator().manual_seed(5))
    assert torch.equal(pe.actions, ps.actions)
    assert ps.info["iterations"] == pe.info["iterations"] == 4 and ps.info["stopped"] == pe.info["stopped"] == "budget"
    assert ps.info["model_evals"] == pe.info["model_evals"] == 3 * 4 * 6 * 40
