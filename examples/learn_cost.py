"""Learn a cost from demonstrations by differentiating through the planner (inverse optimal control).

    OMP_NUM_THREADS=1 python examples/learn_cost.py [--task lq|cartpole|both] [--steps 150] [--batch 32] [--seed 0]

Two experts, one learner recipe (imitation through `ILQR(differentiable="implicit")`):

1. `lq` (`learn_cost`): Q and R of a linear-quadratic expert.
2. `cartpole` (`learn_cartpole_target`): the hidden target position of a cart-pole balancing
   expert (below, after the LQ part).

LQ:
An expert controls a known linear system x' = A x + B u optimally for the cost
sum_t x_{t+1}' Q x_{t+1} + u_t' R u_t over H steps, with diagonal Q, R hidden from the learner. The
learner has the same dynamics and a cost of the same form with unknown diagonal weights
q = exp(log_q), r = exp(log_r). It plans with `ILQR(differentiable="implicit")` and minimises
the mean squared difference between its planned first actions and the expert's on a batch of
states, by Adam on (log_q, log_r) through the plan: imitation learning of the cost, as in
Amos, Rodriguez, Sacks, Boots & Kolter 2018, "Differentiable MPC for end-to-end planning and
control", Sec. 5.1. A cost is only identifiable up to scale (c Q, c R give the same plan), so the
weights are compared after dividing by their sum.

The expert's actions come from a finite-horizon Riccati recursion in NumPy, not from the planner.

Cart-pole: an expert balances `AnalyticModel.cartpole()` (|u| <= 10 N) with a known reward,
`cos th - 0.5 (x - x_target)^2 - 0.05 (x_dot^2 + th_dot^2) - 0.001 u^2` of every arrival state,
and a target cart position x_target hidden from the learner; it plans H steps with a converged
`ILQR`. The learner knows the reward's form and plans the same way with its own x_target (a
parameter, starting at 0), and fits it by Adam on the squared difference between its whole
planned action sequences `[B, H, 1]` and the expert's on a batch of start states (cart positions
in [-0.5, 0.5] m, pole within 0.2 rad of upright). The dynamics are curved, so the implicit
gradient uses iLQR's Gauss-Newton Hessian (an approximation, as in Amos et al. 2018); the loss is
zero exactly at the expert's target, so the fixed point is unaffected.
"""

import argparse

import numpy as np
import torch

import latentplan as lp

# rounded to float32 values: `AnalyticModel.linear` stores float32 matrices (`.double()` widens
# them exactly), so the expert and the learner see the very same system
A = np.array([[1.1, 0.2, 0.0], [0.0, 1.05, 0.1], [0.1, 0.0, 0.9]], np.float32).astype(np.float64)
B = np.array([[0.5, 0.0], [0.1, 0.3], [0.0, 0.4]], np.float32).astype(np.float64)
Q_TRUE = np.array([2.0, 0.5, 1.0])  # diag Q
R_TRUE = np.array([0.3, 1.2])  # diag R


def expert_first_actions(x0: np.ndarray, q: np.ndarray, r: np.ndarray, horizon: int) -> np.ndarray:
    """`[N, m]` the optimal first actions u_0 = -K_0 x_0 of the H-step problem, from `x0 [N, n]`.

    Backward Riccati recursion with arrival cost: S = Q + P_{t+1}, K_t = (R + B'SB)^{-1} B'SA,
    P_t = A'S(A - B K_t), P_H = 0.
    """
    Q, R = np.diag(q), np.diag(r)
    P = np.zeros_like(Q)
    for _ in range(horizon):
        S = Q + P
        K = np.linalg.solve(R + B.T @ S @ B, B.T @ S @ A)
        P = A.T @ S @ (A - B @ K)
    return -x0 @ K.T


def learner_objective(model, log_q: torch.Tensor, log_r: torch.Tensor) -> lp.Objective:
    """The learner's objective: reward -(x' diag(q) x) - u' diag(r) u, weights read from the context."""

    @lp.reward(inputs="latent")
    def quadratic(state, action, ctx):
        return -(state.deter.pow(2) * ctx["q"]).sum(-1) - (action.pow(2) * ctx["r"]).sum(-1)

    return lp.Objective(model, rewards=[quadratic], context={"q": log_q.exp()[None], "r": log_r.exp()[None]})


def learn_cost(steps: int = 150, batch: int = 32, horizon: int = 5, lr: float = 0.2, seed: int = 0,
               verbose: bool = True) -> dict:
    """Fit the learner's (log_q, log_r) by imitation through the planner.

    Returns:
        `{"weights": [n + m] learned diag(Q), diag(R) / their sum, "true": the same for the expert,
        "max_rel_error": max |learned - true| / true over the normalised weights,
        "action_mse": the final imitation loss}`.
    """
    rng = np.random.default_rng(seed)
    model = lp.AnalyticModel.linear(A, B, np.eye(3), action_bound=1e3).double()  # its own reward is unused
    x0 = rng.standard_normal((batch, 3))
    target = torch.tensor(expert_first_actions(x0, Q_TRUE, R_TRUE, horizon))
    state = model.from_observation(torch.tensor(x0))
    state = lp.LatentState(state.deter.double(), state.stoch.double())
    log_q = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # start from Q = R = I
    log_r = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    planner = lp.ILQR(horizon=horizon, iterations=1, differentiable="implicit")  # LQ: one iteration is exact
    opt = torch.optim.Adam([log_q, log_r], lr=lr)
    true = np.concatenate([Q_TRUE, R_TRUE])
    true = true / true.sum()
    for step in range(steps + 1):
        plan = planner.plan(learner_objective(model, log_q, log_r), state)
        loss = (plan.actions[:, 0] - target).pow(2).sum(-1).mean()
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and step % 25 == 0:
            print(f"step {step:4d}  imitation loss {loss.item():.3e}")
    w = torch.cat([log_q, log_r]).exp().detach().numpy()
    w = w / w.sum()
    err = float(np.max(np.abs(w - true) / true))
    return {"weights": w, "true": true, "max_rel_error": err, "action_mse": loss.item()}


def cartpole_objective(model, target: torch.Tensor) -> lp.Objective:
    """The cart-pole reward with the target cart position `target` (a 0-d tensor, m) in the context."""

    @lp.reward(inputs="latent")
    def balance_at(state, action, ctx):
        s = state.deter
        return (s[:, 2] - 0.5 * (s[:, 0] - ctx["x_target"]).pow(2) - 0.05 * (s[:, 1].pow(2) + s[:, 4].pow(2))
                - 0.001 * action[:, 0].pow(2))

    return lp.Objective(model, rewards=[balance_at], context={"x_target": target.reshape(1)})


def cartpole_starts(batch: int, seed: int) -> torch.Tensor:
    """`[batch, 5]` float64 start states: cart in [-0.5, 0.5] m, pole within 0.2 rad of upright, at rest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, generator=g, dtype=torch.float64) - 0.5
    th = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * 0.2
    zero = torch.zeros(batch, dtype=torch.float64)
    return torch.stack([x, zero, th.cos(), th.sin(), zero], 1)


def learn_cartpole_target(steps: int = 20, batch: int = 16, horizon: int = 10, hidden_target: float = 0.3,
                          seed: int = 0, verbose: bool = True) -> dict:
    """Recover the cart-pole expert's hidden target position by imitation through the planner.

    One parameter and a smooth loss: L-BFGS with a strong-Wolfe line search (`torch.optim.LBFGS`),
    at most `steps` evaluations of the loss and its gradient (one plan and one implicit backward
    pass each). The learner's plan is warm-started from its previous one (the fixed point, and so
    the implicit gradient, does not depend on the start; it only needs fewer iterations).

    Returns:
        `{"target": learned x_target (m), "true": hidden_target, "error": |learned - true| (m),
        "action_mse": the final imitation loss (N^2), "start_mse": the loss at x_target = 0,
        "evaluations": plans made by the learner}`.
    """
    model = lp.AnalyticModel.cartpole(dtype=torch.float64)
    state = model.from_observation(cartpole_starts(batch, seed))
    planner = dict(horizon=horizon, iterations=50, tolerance=1e-10)
    with torch.no_grad():  # the expert: the same planner with the hidden target
        expert = lp.ILQR(**planner).plan(cartpole_objective(model, torch.tensor(hidden_target, dtype=torch.float64)),
                                         state).actions
    target = torch.zeros((), dtype=torch.float64, requires_grad=True)
    learner = lp.ILQR(**planner, differentiable="implicit")
    opt = torch.optim.LBFGS([target], lr=1.0, max_iter=steps, max_eval=steps, line_search_fn="strong_wolfe")
    losses: list[float] = []
    warm: list = [None]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        plan = learner.plan(cartpole_objective(model, target), state, warm_start=warm[0])
        warm[0] = lp.Plan(plan.actions.detach(), plan.value.detach())
        loss = (plan.actions - expert).pow(2).sum((1, 2)).mean()
        loss.backward()
        losses.append(loss.item())
        if verbose:
            print(f"plan {len(losses):3d}  imitation loss {loss.item():.3e}  x_target {target.item():+.4f} m")
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = learner.plan(cartpole_objective(model, target.detach()), state, warm_start=warm[0]).actions
    learned = target.item()
    return {"target": learned, "true": hidden_target, "error": abs(learned - hidden_target),
            "action_mse": (final - expert).pow(2).sum((1, 2)).mean().item(), "start_mse": losses[0],
            "evaluations": len(losses)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=("lq", "cartpole", "both"), default="both")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default: 150 for lq; for cartpole, the most L-BFGS evaluations, 20)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.task in ("lq", "both"):
        out = learn_cost(args.steps or 150, args.batch, seed=args.seed)
        np.set_printoptions(precision=4, suppress=True)
        print("diag Q, diag R up to scale (divided by their sum):")
        print("  learned", out["weights"])
        print("  true   ", out["true"])
        print(f"max relative error {100 * out['max_rel_error']:.2f} %, final imitation loss {out['action_mse']:.2e}")
    if args.task in ("cartpole", "both"):
        out = learn_cartpole_target(args.steps or 20, min(args.batch, 16), seed=args.seed)
        print(f"cart-pole target: learned {out['target']:+.4f} m, hidden {out['true']:+.4f} m, error "
              f"{out['error']:.1e} m ({out['evaluations']} plans); imitation loss {out['start_mse']:.2e} -> {out['action_mse']:.2e}")


if __name__ == "__main__":
    main()
