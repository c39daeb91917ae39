"""The CPU fast path: CEM's fused search (and its compiled form) gives the eager plan of the same
seed; the restructured ELBO is the per-step ELBO; `compile="auto"` picks modes as documented."""

import dataclasses
import time
import warnings

import pytest
import torch

import latentplan as lp
from latentplan.planners import fused_search
from latentplan.worldmodels import FusedRSSM, LatentState
from script_loader import load_script



def _model(seed=0, deter=12, stoch=4, action_dim=2):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(lp.RSSMConfig(deter=deter, stoch=stoch, hidden=10, embed=10), obs_shape=(3,),
                              action_dim=action_dim, action_low=(-1.0, -0.5), action_high=(1.0, 0.5))
    return lp.RSSMWorldModel(cfg).eval()


def _beliefs(model, b, seed=3):
    g = torch.Generator().manual_seed(seed)
    return LatentState(torch.randn(b, model.config.deter, generator=g), torch.randn(b, model.config.stoch, generator=g))


def _plan(model, mode, state, objective=None, **cfg):
    planner = lp.CEM(lp.CEMConfig(**{"horizon": 5, "iterations": 3, "candidates": 24, "elites": 5, **cfg}), compile=mode)
    return planner.plan(objective or lp.Objective(model), state, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("settings", [{}, {"momentum": 0.3, "min_std": 0.05}, {"discount": 0.9}])
def test_fused_search_gives_the_eager_plan(settings):
    model = _model()
    state = _beliefs(model, 2)
    discount = settings.pop("discount", 1.0)
    objective = lp.Objective(model, discount=discount)
    eager = _plan(model, "eager", state, objective, **settings)
    fused = _plan(model, "fused", state, objective, **settings)
    assert fused.info["compile"] == "fused"
    torch.testing.assert_close(fused.actions, eager.actions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.value, eager.value, atol=1e-4, rtol=1e-5)
    assert fused.info["model_evals"] == eager.info["model_evals"] == 2 * 24 * 5 * 3
    assert fused.info["iterations"] == 3


def test_fused_search_over_a_fused_model_and_the_same_returns_as_the_objective():
    model = _model(1)
    state = _beliefs(model, 1)
    eager = _plan(model, "eager", state)
    fused = _plan(model, "fused", state, lp.Objective(FusedRSSM(model)))
    torch.testing.assert_close(fused.actions, eager.actions, atol=1e-5, rtol=1e-5)
    # prior_returns with the rollout's noise drawn step by step is Objective.returns
    fm = FusedRSSM(model)
    actions = torch.rand(6, 5, 2, generator=torch.Generator().manual_seed(2)) - 0.5
    start = state.expand(6)
    want = lp.Objective(model).returns(start, actions, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    eps = torch.stack([torch.randn(6, model.config.stoch, generator=g) for _ in range(5)])
    got = fused_search.prior_returns(fm._w, start.deter, start.stoch, actions, eps, min_std=model.config.min_std)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_fused_search_is_close_to_fp32_and_refuses_tf32():
    """`Objective(FusedRSSM(model, precision="bf16"))` takes the fused search with every matrix product
    in bfloat16 (the reward head's too): its returns differ from fp32 by bf16 rounding only (here
    below 3 % of their spread over 64 sequences, nearly the same order of candidates), and its plan is
    close to the fp32 plan of the same seed (here the same elites), its value not equal to it. tf32 (a
    CUDA setting) is refused."""
    model = _model(4)
    state = _beliefs(model, 2)
    fp32, bf16 = FusedRSSM(model), FusedRSSM(model, precision="bf16")
    assert bf16._w["gru_wi"].dtype == bf16._w["r0_w"].dtype == torch.bfloat16 and fp32._w["gru_wi"].dtype == torch.float32
    g = torch.Generator().manual_seed(5)
    actions = torch.rand(64, 5, 2, generator=g) - 0.5
    eps = torch.randn(5, 64, model.config.stoch, generator=g)
    start = state.expand(32)
    r32 = fused_search.prior_returns(fp32._w, start.deter, start.stoch, actions, eps, min_std=model.config.min_std)
    r16 = fused_search.prior_returns(bf16._w, start.deter, start.stoch, actions, eps, min_std=model.config.min_std)
    err = (r16 - r32).abs().max().item()
    assert 0 < err < 0.03 * r32.std().item()  # measured: 1.4 %
    ranks = torch.stack([r32.argsort().argsort(), r16.argsort().argsort()]).float()
    assert torch.corrcoef(ranks)[0, 1] > 0.999
    eager = _plan(model, "eager", state)
    plan = _plan(model, "fused", state, lp.Objective(bf16))
    assert plan.info["compile"] == "fused"
    assert (plan.actions - eager.actions).abs().max().item() < 0.05  # here the same elites: equal plans
    assert 0 < (plan.value - eager.value).abs().max().item() < 0.01  # values of bf16 returns
    with pytest.raises(ValueError, match="fp32 or bf16.*'tf32'"):
        _plan(model, "fused", state, lp.Objective(FusedRSSM(model, precision="tf32")))


def test_fused_search_follows_weight_updates():
    model = _model(2)
    state = _beliefs(model, 1)
    planner = lp.CEM(horizon=4, iterations=2, candidates=16, elites=4, compile="fused")
    planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.reward_head.net[-1].bias.add_(1.0)  # every step's reward + 1: value + H
        model.gru.weight_hh.mul_(0.5)
    eager = _plan(model, "eager", state, horizon=4, iterations=2, candidates=16, elites=4)
    again = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again.actions, eager.actions, atol=1e-5, rtol=1e-5)


def test_fused_modes_refuse_settings_they_do_not_cover():
    model = _model()
    state = _beliefs(model, 1)
    with pytest.raises(ValueError, match="noise_beta"):
        _plan(model, "fused", state, noise_beta=2.0)
    with pytest.raises(ValueError, match="refit='mppi'"):
        _plan(model, "fused_compile", state, refit="mppi")
    upright = lp.reward(lambda obs, ctx: obs["obs"][:, 0])
    with pytest.raises(ValueError, match="default objective"):
        _plan(model, "fused", state, lp.Objective(model, rewards=[upright]))


def test_auto_compiles_once_the_eager_decisions_have_spent_the_threshold(monkeypatch):
    """Ski rental by count: `compile="auto"` on the CPU plans eagerly until the planner's eager
    decisions have spent `AUTO_COMPILE_AFTER_EVALS` imagined transitions, then takes the compiled
    fused search (here the uncompiled iteration stands in for inductor's, so no compile runs);
    never with a deadline or with LATENTPLAN_COMPILE=0."""
    model = _model()
    state = _beliefs(model, 2)
    monkeypatch.delenv("LATENTPLAN_COMPILE", raising=False)  # conftest switches compiling off for the suite
    search = fused_search.FusedCEMSearch()
    search.count(fused_search.AUTO_COMPILE_AFTER_EVALS - 1)
    assert search.auto_mode(None) is None
    search.count(1)
    assert search.auto_mode(None) == "fused_compile"
    assert search.auto_mode(deadline=1e12) is None
    monkeypatch.setenv("LATENTPLAN_COMPILE", "0")
    assert search.auto_mode(None) is None
    monkeypatch.delenv("LATENTPLAN_COMPILE")

    # through CEM.plan: B=2 x H=5 x I=3 x J=24 = 720 transitions per decision; switch after 3
    monkeypatch.setattr(fused_search, "AUTO_COMPILE_AFTER_EVALS", 3 * 720)
    monkeypatch.setattr(fused_search, "_compiled_iteration", lambda: fused_search.cem_iteration)
    planner = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5)
    modes, evals = [], []
    for k in range(5):
        plan = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(k))
        modes.append(plan.info["compile"])
        evals.append(plan.info["model_evals"])
    assert evals == [720] * 5
    assert modes == ["eager"] * 3 + ["fused_compile"] * 2
    assert planner.auto_compile_progress == 3 * 720  # compiled decisions are not counted again
    late = planner.plan(lp.Objective(model), state, deadline=time.perf_counter() + 60.0)
    assert late.info["compile"] == "eager"
    # the switch does not change the plan beyond float rounding
    eager = _plan(model, "eager", state)
    switched = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))
    assert switched.info["compile"] == "fused_compile"
    torch.testing.assert_close(switched.actions, eager.actions, atol=1e-5, rtol=1e-5)


def test_auto_compiles_from_the_first_decision_when_the_run_is_known_to_be_long(monkeypatch, tmp_path):
    """A known horizon: with `expected_transitions` at least twice the threshold, `compile="auto"`
    takes the compiled search from the first decision; below that it waits for the count. A
    `Trainer` sets it from its config: the demo's 35 planned episodes x 125 decisions x 6,000."""
    model = _model()
    state = _beliefs(model, 2)
    monkeypatch.delenv("LATENTPLAN_COMPILE", raising=False)
    monkeypatch.setattr(fused_search, "_compiled_iteration", lambda: fused_search.cem_iteration)
    threshold = fused_search.AUTO_COMPILE_AFTER_EVALS
    for expected, first_mode in [(2 * threshold - 1, "eager"), (2 * threshold, "fused_compile")]:
        planner = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5)
        planner.expected_transitions = expected
        plan = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(0))
        assert plan.info["compile"] == first_mode
        assert planner.plan(lp.Objective(model), state, deadline=time.perf_counter() + 60).info["compile"] == "eager"
    with pytest.raises(ValueError, match="expected_transitions"):
        planner.expected_transitions = -1
    trainer = lp.Trainer(lp.demo_config(run_dir=str(tmp_path / "demo"), progress=False))
    try:
        assert trainer.planner.expected_transitions == 35 * 125 * 6000 >= 2 * threshold
    finally:
        trainer.close()


def test_a_failed_auto_compile_warns_and_gives_the_uncompiled_fused_plan(monkeypatch):
    model = _model()
    state = _beliefs(model, 1)

    def broken():
        def step(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return step

    monkeypatch.setattr(fused_search, "_compiled_iteration", broken)
    monkeypatch.delenv("LATENTPLAN_COMPILE", raising=False)
    monkeypatch.setattr(fused_search, "AUTO_COMPILE_AFTER_EVALS", 0)
    planner = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        plan = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))
    assert plan.info["compile"] == "fused"
    torch.testing.assert_close(plan.actions, _plan(model, "eager", state).actions, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls plan eagerly without a word
        assert planner.plan(lp.Objective(model), state).info["compile"] == "eager"
    explicit = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5, compile="fused_compile")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        explicit.plan(lp.Objective(model), state)


@pytest.mark.slow
def test_compiled_fused_search_gives_the_eager_plan():
    """Compiles a tiny model's iteration with inductor (tens of seconds on two cores)."""
    model = _model()
    state = _beliefs(model, 2)
    eager = _plan(model, "eager", state)
    compiled = _plan(model, "fused_compile", state)
    assert compiled.info["compile"] == "fused_compile"
    torch.testing.assert_close(compiled.actions, eager.actions, atol=1e-5, rtol=1e-5)


def _stepwise_elbo():
    """`benchmarks/train_speed.py`'s `stepwise_elbo`: the ELBO computed step by step, prior and
    posterior inside the loop, as `RSSMWorldModel.elbo` did before its loop was restructured."""
    return load_script("benchmarks/train_speed.py").stepwise_elbo  # it imports floor.py beside it


def test_elbo_equals_the_stepwise_elbo_with_its_gradients():
    model = _model(4).train()
    g = torch.Generator().manual_seed(0)
    b, t = 3, 6
    obs, action, reward = torch.randn(b, t, 3, generator=g), torch.rand(b, t, 2, generator=g) - 0.5, torch.randn(b, t, generator=g)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True  # an episode starts inside a chunk: the belief and action are reset there
    terms = model.elbo(obs, action, reward, is_first, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(terms.loss, list(model.parameters()), allow_unused=True)
    ref_loss, ref_kl = _stepwise_elbo()(model, obs, action, reward, is_first, torch.Generator().manual_seed(5))
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(terms.loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms.kl, ref_kl.detach(), atol=1e-6, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fused_search_honours_the_budget_and_the_convergence_stop():
    """The fused search runs `planned_iterations` (the budget `max_evals`) and stops on `tol` after the
    same iteration as the eager search, with the eager plan of the same seed."""
    model = _model()
    state = _beliefs(model, 2)
    per_iteration = 5 * 24  # H * J per environment
    for settings, stopped, iterations in [(dict(iterations=50, max_evals=3 * per_iteration + 10, tol=0.0), "budget", 3),
                                          (dict(iterations=50, max_evals=None, tol=0.2), "converged", None)]:
        eager = _plan(model, "eager", state, **settings)
        fused = _plan(model, "fused", state, **settings)
        assert fused.info["stopped"] == eager.info["stopped"] == stopped
        assert fused.info["iterations"] == eager.info["iterations"] == (iterations or eager.info["iterations"]) < 50
        assert fused.info["model_evals"] == eager.info["model_evals"] == 2 * per_iteration * eager.info["iterations"]
        torch.testing.assert_close(fused.actions, eager.actions, atol=1e-5, rtol=1e-5)


def _elbo_batch(b=3, t=6):
    g = torch.Generator().manual_seed(0)
    obs, action, reward = torch.randn(b, t, 3, generator=g), torch.rand(b, t, 2, generator=g) - 0.5, torch.randn(b, t, generator=g)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True
    return obs, action, reward, is_first


def _loss_and_grads(model, batch, core=None, seed=5):
    terms = model.elbo(*batch, generator=torch.Generator().manual_seed(seed), core=core)
    return terms, torch.autograd.grad(terms.loss, list(model.parameters()), allow_unused=True)


def test_elbo_noise_is_the_elbos_randomness_and_elbo_core_its_pure_part():
    model = _model(4).train()
    batch = _elbo_batch()
    obs, action, reward, is_first = batch
    enc_in, eps = model.elbo_noise(obs, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the posterior noise, drawn step by step as the loop used it
    want = torch.stack([torch.randn(3, model.config.stoch, generator=g) for _ in range(6)])
    assert torch.equal(eps, want) and eps.shape == (6, 3, model.config.stoch)
    assert torch.equal(enc_in, obs.flatten(0, 1))
    loss, recon, rew, kl, deter, stoch, probe = model.elbo_core(enc_in, obs.flatten(0, 1), action, reward, is_first, eps)
    terms = model.elbo(*batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(loss, terms.loss) and torch.equal(kl, terms.kl) and float(probe) == 0.0
    assert torch.equal(deter, terms.posterior.deter) and deter.shape == (18, model.config.deter)
    # an explicit core is called in place of elbo_core: a core that doubles the loss doubles it
    doubled = model.elbo(*batch, generator=torch.Generator().manual_seed(5),
                         core=lambda *a: (2 * model.elbo_core(*a)[0], *model.elbo_core(*a)[1:]))
    torch.testing.assert_close(doubled.loss, 2 * terms.loss)


@pytest.mark.slow
def test_compiled_elbo_core_gives_the_eager_loss_and_gradients():
    model = _model(4).train()
    batch = _elbo_batch()
    first, _ = _loss_and_grads(model, batch, seed=5)
    compiled_core = torch.compile(model.elbo_core)
    for seed in (5, 5, 6):  # the second call reuses the compiled graph; a new seed gives new noise
        ref, ref_grads = _loss_and_grads(model, batch, seed=seed)
        got, grads = _loss_and_grads(model, batch, core=compiled_core, seed=seed)
        torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.kl, ref.kl, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.posterior.stoch, ref.posterior.stoch, atol=1e-5, rtol=1e-5)
        for g, w in zip(grads, ref_grads):
            if w is None:
                assert g is None or torch.count_nonzero(g) == 0
            else:
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert not torch.equal(ref.loss, first.loss)  # seed 6's noise is not seed 5's


@pytest.mark.slow
def test_compile_update_trains_as_the_eager_update(tmp_path):
    """Two short training runs, one with `compile_update`: the same mean losses of their updates."""
    import json

    def losses(compile_update: bool, name: str) -> list[float]:
        config = lp.demo_config(
            run_dir=str(tmp_path / name), episodes=3, seed_episodes=1, updates_per_episode=3, batch_size=4,
            chunk_length=8, final_eval_episodes=0, progress=False, device="cpu", max_wall_minutes=None,
            eval_every=100, compile_update=compile_update,
            model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
            planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
        )
        lp.train(config)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    eager, compiled = losses(False, "eager"), losses(True, "compiled")
    assert len(eager) == 2 and len(compiled) == 2  # two trained episodes of 3 updates each
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_plan_speed_compares_peers_with_the_fp32_row_and_the_bf16_row_beside_it():
    """`benchmarks/plan_speed.py`: a bf16 row never replaces our fastest fp32 row as the peers'
    reference, it gets a ratio of its own; the floor module times bf16 operands when asked."""
    ps = load_script("benchmarks/plan_speed.py")

    def row(planner, mode, ms):
        return {"planner": planner, "mode": mode, "ms_median": ms, "cpu_ms_median": ms, "ms_all": [ms], "cpu_ms_all": [ms]}

    rows = [row("CEM (PlaNet)", "fused_compile", 1000.0), row("CEM (PlaNet)", "fused_compile bf16", 400.0),
            row("CEM (PlaNet)", "eager", 1400.0), row("torchrl CEMPlanner (PlaNet)", "torchrl", 1300.0)]
    ratios = {r["ours"]: r["cpu_median_ratio"] for r in ps.peer_ratios(rows)}
    assert ratios == {"CEM (PlaNet), fused_compile": pytest.approx(1.3), "CEM (PlaNet), fused_compile bf16": pytest.approx(3.25)}
    floor = load_script("benchmarks/floor.py")
    m = floor.measure({(8, 4, 2): 3}, repeats=1, dtype=torch.bfloat16)
    assert m["gflop"] == pytest.approx(3 * 2 * 8 * 4 * 2 / 1e9) and m["ms"] > 0


@pytest.mark.parametrize("optimizer", ["fused", "foreach", "for-loop"])
def test_the_fused_search_sees_every_optimizer_step(optimizer):
    """Regression: `Adam(fused=True)` writes the parameters in place without bumping their version
    counters, so a planner's fused weights went stale after the first training step (the demo's
    returns fell from about 600 to 180 once `compile="auto"` switched to the fused search). The
    fused search must plan with the weights as they are now, whatever optimizer trained them."""
    model = _model()
    state = _beliefs(model, 2)
    planner = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5, compile="fused")
    planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))  # builds the fused weights
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[optimizer]
    opt = torch.optim.Adam(model.parameters(), lr=0.05, **kwargs)
    versions = [p._version for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    if optimizer == "fused":  # the premise of the regression: no version counter moved
        assert [p._version for p in model.parameters()] == versions
    after = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))
    eager = _plan(model, "eager", state)
    torch.testing.assert_close(after.actions, eager.actions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.value, eager.value, atol=1e-4, rtol=1e-5)
    # writes through .data bypass both signals; refresh(force=True) picks them up
    fused = FusedRSSM(model)
    before = fused._w["gru_b"].clone()
    model.gru.bias_ih.data.add_(1.0)
    assert not fused.refresh() and torch.equal(fused._w["gru_b"], before)
    assert fused.refresh(force=True) and not torch.equal(fused._w["gru_b"], before)


def test_a_planners_own_optimizer_steps_do_not_rebuild_the_fused_weights():
    """The gradient planners step `torch.optim` optimizers over plain action tensors; only steps over
    `nn.Parameter`s (a model's weights) make `FusedRSSM` rebuild its copies."""
    model = _model()
    fused = FusedRSSM(model)
    actions = torch.zeros(2, 3, requires_grad=True)
    opt = torch.optim.Adam([actions], lr=0.1, fused=True)
    actions.grad = torch.ones_like(actions)
    opt.step()
    assert not fused.refresh()
    weights = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    weights.step()
    assert fused.refresh()
    assert not fused.refresh()


def test_the_compiled_iteration_always_sees_row_major_inputs(monkeypatch):
    """The compiled iteration is specialised to its inputs' exact strides; a belief or warm start
    with other strides (a [1, D] row with stride 1 in its size-1 dimension, a transposed batch)
    recompiled it: a 6 s stall in the middle of a control loop, measured. The search hands it
    fresh row-major copies, and the plan is the same."""
    seen = []

    def recording(*args, **kwargs):
        seen.append([a.stride() for a in args[:6]])
        return fused_search.cem_iteration(*args, **kwargs)

    monkeypatch.setattr(fused_search, "_compiled_iteration", lambda: recording)
    model = _model()
    state = _beliefs(model, 1)
    odd = LatentState(state.deter.clone().as_strided(state.deter.shape, (1, 1)),
                      state.stoch.clone().as_strided(state.stoch.shape, (1, 1)))
    assert odd.deter.stride() != state.deter.stride() and torch.equal(odd.deter, state.deter)
    planner = lp.CEM(horizon=5, iterations=3, candidates=24, elites=5, compile="fused_compile")
    a = planner.plan(lp.Objective(model), state, generator=torch.Generator().manual_seed(7))
    b = planner.plan(lp.Objective(model), odd, generator=torch.Generator().manual_seed(7),
                     warm_start=lp.Plan(a.actions.transpose(1, 2).contiguous().transpose(1, 2), a.value))
    c = planner.plan(lp.Objective(model), odd, generator=torch.Generator().manual_seed(7))
    assert len(seen) == 9 and all(s == seen[0] for s in seen)  # one set of strides for every call
    assert seen[0][4] == (model.config.deter, 1) and seen[0][5] == (model.config.stoch, 1)
    torch.testing.assert_close(c.actions, a.actions, atol=0, rtol=0)
    assert b.info["compile"] == "fused_compile"
