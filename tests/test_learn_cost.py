"""examples/learn_cost.py recovers a hidden diagonal LQ cost from the expert's first actions, by
gradients through the iLQR plan (Amos et al. 2018, Sec. 5.1)."""


import numpy as np
import torch

from script_loader import load_script


def _example():
    return load_script("examples/learn_cost.py")


def test_the_expert_is_the_riccati_optimum_the_planner_finds():
    ex = _example()
    x0 = np.array([[1.0, -0.5, 0.3]])
    model = ex.lp.AnalyticModel.linear(ex.A, ex.B, np.eye(3), action_bound=1e3).double()
    objective = ex.learner_objective(model, torch.tensor(ex.Q_TRUE).log(), torch.tensor(ex.R_TRUE).log())
    state = ex.lp.LatentState(torch.tensor(x0), torch.zeros(1, 0, dtype=torch.float64))
    plan = ex.lp.ILQR(horizon=5, iterations=1).plan(objective, state)
    want = ex.expert_first_actions(x0, ex.Q_TRUE, ex.R_TRUE, 5)
    assert np.abs(plan.actions[0, 0].numpy() - want[0]).max() <= 1e-12


def test_learn_cost_recovers_q_and_r_up_to_scale():
    out = _example().learn_cost(steps=120, batch=16, lr=0.2, seed=0, verbose=False)
    print(f"learned {out['weights']}, true {out['true']}, max relative error {out['max_rel_error']:.2%}")
    assert out["max_rel_error"] <= 0.05, out  # the target; measured 0.25 %
    assert out["action_mse"] <= 1e-5  # measured 4e-7 (from 0.59 at Q = R = I)


def test_the_cartpole_experts_rest_point_is_its_hidden_target():
    # at the target, upright and at rest, the expert's optimal plan is to do nothing (return H: cos th = 1
    # and no penalty every step); from either side its first action pushes the cart towards the target
    ex = _example()
    model = ex.lp.AnalyticModel.cartpole(dtype=torch.float64)
    objective = ex.cartpole_objective(model, torch.tensor(0.3, dtype=torch.float64))
    x = torch.tensor([[0.3, 0, 1, 0, 0], [-0.2, 0, 1, 0, 0], [0.8, 0, 1, 0, 0]], dtype=torch.float64)
    plan = ex.lp.ILQR(horizon=10, iterations=50, tolerance=1e-10).plan(objective, model.from_observation(x))
    assert plan.actions[0].abs().max().item() <= 1e-12
    assert abs(plan.value[0].item() - 10.0) <= 1e-12
    assert plan.actions[1, 0, 0].item() > 0 > plan.actions[2, 0, 0].item()  # -0.2 m: push right; 0.8 m: left


def test_learn_cartpole_target_recovers_the_hidden_target():
    # tiny version of the example's default (16 starts, H = 10): 4 starts, H = 6, at most 6 plans
    out = _example().learn_cartpole_target(steps=6, batch=4, horizon=6, verbose=False)
    print(out)
    assert out["error"] <= 0.05  # the target; measured 2e-6 m
    assert out["action_mse"] <= 1e-3 * out["start_mse"]  # measured 2e-10 from 2.4
