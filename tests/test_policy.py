"""The policy network (bounds, density, sizes, its file), the policy planner, and policies as
proposals of CEM and the gradient planner, with exact answers on the linear-quadratic system."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentplan.planners import CEM, CEMConfig, GradientConfig, GradientPlanner, Planner, Policy
from latentplan.planners.policy import GaussianPolicy, PolicyConfig, PolicyPlanner, policy_rollout
from latentplan.worldmodels import LatentState
from lq_world import LQRPolicy, closed_loop, lq_problem


# --------------------------------------------------------------------------- the policy


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-3, 1e6),
    weight_scale=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**31 - 1),
    deterministic=st.booleans(),
)
def test_policy_actions_are_always_within_bounds(scale, weight_scale, seed, deterministic):
    low, high = torch.tensor([-1.0, 0.0, -20.0]), torch.tensor([2.0, 0.5, -19.0])
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left as it was
        torch.manual_seed(seed)
        policy = GaussianPolicy(4, 3, low, high, PolicyConfig(hidden=16))
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(weight_scale)
    feats = torch.randn(64, 4) * scale
    a = policy.act(LatentState(feats, torch.zeros(64, 0)), generator=torch.Generator().manual_seed(seed),
                   deterministic=deterministic)
    assert a.shape == (64, 3)
    assert torch.isfinite(a).all()
    assert (a >= low).all() and (a <= high).all()


def test_log_prob_is_the_squashed_gaussian_density():
    low, high = torch.tensor([-2.0]), torch.tensor([3.0])
    policy = GaussianPolicy(2, 1, low, high)
    feats = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    mean, log_std = policy(feats)
    # integrates to 1 over the box (the density of a bijection of a Gaussian)
    grid = torch.linspace(-2.0, 3.0, 200_001)[1:-1]
    dens = policy.log_prob(feats, grid[None, :, None].expand(2, -1, 1)).exp()
    mass = torch.trapezoid(dens, grid, dim=1)
    torch.testing.assert_close(mass, torch.ones(2), atol=2e-3, rtol=0)
    # and equals torch.distributions' change of variables at some points
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [
        torch.distributions.TanhTransform(), torch.distributions.AffineTransform(low + 2.5, 2.5)])
    a = torch.tensor([[-1.5], [2.9]])
    torch.testing.assert_close(policy.log_prob(feats, a), dist.log_prob(a).sum(-1), atol=1e-4, rtol=1e-4)


def test_policy_rejects_bad_sizes_and_bounds():
    with pytest.raises(ValueError, match="low < high"):
        GaussianPolicy(3, 1, [1.0], [1.0])
    with pytest.raises(ValueError, match=r"\[A=2\]"):
        GaussianPolicy(3, 2, [0.0], [1.0])
    policy = GaussianPolicy(3, 1, [-1.0], [1.0])
    with pytest.raises(ValueError, match="F=3"):
        policy.act(LatentState(torch.zeros(2, 2), torch.zeros(2, 2)))




# --------------------------------------------------------------------------- the planner and proposals


def test_policy_planner_acts_in_one_pass_and_rolls_out_exactly():
    env, model, factory, P, K = lq_problem()
    x0 = np.array([[1.0, 0.0], [-0.5, 0.8], [0.7, -0.6]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    one = PolicyPlanner(LQRPolicy(K))
    assert isinstance(one, Planner) and isinstance(LQRPolicy(K), Policy)
    plan = one.plan(factory(model), state)
    assert plan.actions.shape == (3, 1, 1) and plan.info["model_evals"] == 0
    assert torch.isnan(plan.value).all()  # nothing estimated: NaN, not 0
    np.testing.assert_allclose(plan.actions[:, 0].numpy(), -x0 @ K.T, rtol=1e-5, atol=1e-6)

    h = 6
    plan = PolicyPlanner(LQRPolicy(K), horizon=h).plan(factory(model), state)
    assert plan.actions.shape == (3, h, 1) and plan.info["model_evals"] == 3 * h
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-4, atol=1e-5)
    # the closed loop's return with the Riccati terminal value is the optimum -x0'(P - Q)x0 (Bellman)
    optimum = -np.einsum("ni,ij,nj->n", x0, P - env.Q, x0)
    np.testing.assert_allclose(plan.value.numpy(), optimum, rtol=1e-4)
    actions, ret, evals = policy_rollout(LQRPolicy(K), factory(model), state, h)
    assert ret is None and evals == 3 * (h - 1)
    torch.testing.assert_close(actions, plan.actions)


def test_cem_with_a_policy_proposal_keeps_the_policy_rollout():
    """CEM with one iteration and one elite: the optimal policy's mode rollout beats every random
    candidate, so the plan is exactly the LQR closed loop; without a proposal it is not."""
    env, model, factory, P, K = lq_problem()
    x0 = np.array([[1.0, 0.0], [-0.5, 0.8]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    h, j = 5, 20
    cfg = CEMConfig(horizon=h, iterations=1, candidates=j, elites=1, policy_fraction=0.2)
    assert cfg.policy_candidates == 4
    plan = CEM(cfg, proposal=LQRPolicy(K)).plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-4, atol=1e-5)
    assert plan.info["model_evals"] == 2 * j * h + 2 * 4 * (h - 1)  # J rows evaluated + the policy rollouts
    plain = CEM(cfg).plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    assert float((plain.actions - plan.actions).abs().max()) > 0.1
    assert plain.info["model_evals"] == 2 * j * h
    # the fraction alone (no proposal) is plain CEM, draw for draw
    torch.testing.assert_close(plain.actions, CEM(horizon=h, iterations=1, candidates=j, elites=1).plan(
        factory(model), state, generator=torch.Generator().manual_seed(0)).actions)
    with pytest.raises(ValueError, match="policy_fraction"):
        CEM(CEMConfig(horizon=h), proposal=LQRPolicy(K))
    with pytest.raises(ValueError, match="policy_fraction"):
        CEMConfig(policy_fraction=1.5)


def test_gradient_planner_starts_from_the_policy_rollout():
    env, model, factory, P, K = lq_problem()
    x0 = np.array([[0.6, -0.3]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    h = 5
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=h, iterations=1, restarts=1, lr=1e-6, init="policy"), proposal=LQRPolicy(K))
    plan = planner.plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-3, atol=1e-4)
    # one step (forward + backward, the backward counted as 2 forward), a last forward, the policy's rollout
    assert plan.info["model_evals"] == 1 * h * (1 * 3 + 1) + (h - 1)
    with pytest.raises(ValueError, match="proposal"):
        GradientPlanner(GradientConfig(init="policy"))
    with pytest.raises(ValueError, match="proposal"):
        GradientPlanner(GradientConfig(), proposal=LQRPolicy(K))


def test_zero_hidden_layers_give_an_affine_policy():
    """`PolicyConfig(layers=0)`: mean and log-std logits affine in the features (a linear policy, the
    class of the LQR's u = -K x); a negative count is rejected by name."""
    from latentplan.planners.policy import PolicyConfig

    policy = GaussianPolicy(3, 2, [-1.0, -1.0], [1.0, 1.0], PolicyConfig(layers=0))
    assert sum(p.numel() for p in policy.parameters()) == 3 * 4 + 4
    f = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    zero = policy(torch.zeros(1, 3))[0]
    mean = policy(torch.cat([f, f.sum(0, keepdim=True)]))[0] - zero
    torch.testing.assert_close(mean[2], mean[0] + mean[1])
    with pytest.raises(ValueError, match="layers"):
        PolicyConfig(layers=-1)
