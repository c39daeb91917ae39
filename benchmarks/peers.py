"""Other libraries' planners driven over a latentplan world model, for `plan_speed.py` to time them in
the same run (same model, same device, same budget) as our planners.

    import peers                                  # benchmarks/ is on sys.path when run as a script
    adapter = peers.torchrl_cem(model, horizon=12, iterations=10, candidates=1000, elites=100, device="cpu")
    if adapter is not None:
        decide, version = adapter
        first_actions = decide(state)             # [B, A]

Each adapter returns `(decide, version)` or None when the peer is not installed. `decide(state)`
plans one decision, from a cold start, for each of the B beliefs of `state` and returns the first
actions `[B, A]`; `version` names the peer's release (for the benchmark's table). The objective is
the one of `lp.Objective(model)` with its defaults: the undiscounted sum over H imagined prior steps
of `model.reward` of each step's next belief. Both peers draw their noise, and the model its latent
samples, from torch's global generator: seed with `torch.manual_seed` for repeatable decisions.

`swm_cem` drives stable-worldmodel 0.1.1's `CEMSolver` (its planning solvers optimise candidates
`[B, S, H, A]` against a `Costable`'s `get_cost`) over the same model; only its `solver` package is
loaded (`load_swm_solvers`), so it needs `pip install --no-deps stable-worldmodel==0.1.1 loguru`
and nothing of its data stack.

`mpc_pytorch` is different: not a sampling planner over the latent but mpc.pytorch's box-DDP
(`mpc.mpc.MPC`, Amos et al. 2018) on a model with known dynamics and a quadratic cost, compared
with our `ILQR` by `benchmarks/ilqr_mpc.py` (converged cost and wall time on the same problem).

`mppi_update_agreement` checks that our `MPPI` and pytorch_mppi make the same update from the same
noise (`python benchmarks/peers.py` prints it on the LQ test system: within 3e-6 in action units
with pytorch-mppi 0.9.1). The same command prints the first actions of our CEM and of the two peer
CEMs at PlaNet's settings on that system (with torchrl 0.14.1 and stable-worldmodel 0.1.1 they
were within 0.07 of ours, from independent samples: the same problem solved alike).

The peers are never dependencies of latentplan: they are imported inside the adapters only. A peer
that is installed but cannot be imported (e.g. a wheel built for another torch) gives a
`RuntimeWarning` naming the error, and None.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from latentplan.worldmodels.state import LatentState, WorldModel

__all__ = ["Decide", "mpc_pytorch", "torchrl_cem", "pytorch_mppi", "swm_cem", "load_swm_solvers",
           "mppi_update_agreement"]

Decide = Callable[[LatentState], Tensor]
"""`decide(state [B]) -> first actions [B, A]`: one planning decision per belief."""


def torchrl_cem(
    model: WorldModel, *, horizon: int, iterations: int, candidates: int, elites: int, device: torch.device | str,
) -> tuple[Decide, str] | None:
    """TorchRL's `CEMPlanner` over `model`: the cross-entropy method of PlaNet run by another library.

    Written against torchrl 0.14.1 with tensordict 0.14.3 (the versions it was tested with, on torch
    2.13.0+cpu; torchrl 0.14.1 needs tensordict < 0.15). There, torchrl's compiled extension does
    not load (an undefined torch symbol), but only its prioritized replay buffers use it: the
    planner and the environments are pure Python.

    The world model is wrapped as a `torchrl.envs.model_based.ModelBasedEnvBase` whose only
    observation (and state) is the latent `"latent"` `[..., D + S]`, the concatenation
    `[deter, stoch]`; a step runs `model.imagine_step` (a prior step that samples z) on the split
    latent and returns `model.reward` of the next belief as `("next", "reward")` `[..., 1]`. It
    never terminates; like torchrl's own `DreamerEnv` it says so (`any_done` is False and
    `maybe_reset` is a no-op), so rollouts do not test `done` after every step.

    TorchRL's CEM starts every call from mean 0 and std 1 (cold start), samples `candidates`
    sequences clipped to `[model.action_low, model.action_high]`, runs `iterations` refits to the
    `elites` best by return and returns the final mean's first action: the algorithm of
    `lp.CEM(CEMConfig(horizon, iterations, candidates, elites))` with its defaults, except that
    torchrl's elite std has Bessel's correction (ours divides by K).

    Args:
        model: any `WorldModel`; it must already live on `device` (torchrl would otherwise move it).
        horizon: H, planning steps.
        iterations: refits of the sampling distribution (torchrl's `optim_steps`).
        candidates: J, sequences per iteration and belief (`num_candidates`).
        elites: K, sequences the distribution is refitted to (`top_k`).
        device: where the planner runs.

    Returns:
        `(decide, version)`, or None if torchrl (or tensordict) is not installed. `decide(state)`
        takes `state [B]` and returns the first actions `[B, A]` of one cold-start CEM call. All
        B beliefs are planned in one call (CEMPlanner plans over any TensorDict batch: every
        iteration rolls out `[B, J]` candidates), under `torch.no_grad()`. What it measures:
        torchrl's planner with its TensorDict rollout machinery (a TensorDict is cloned, stepped
        and stacked for every imagined step) around the same model calls as our CEM.
        `version` is e.g. `"torchrl 0.14.1 (tensordict 0.14.3)"`.

    Raises:
        ValueError: if `model` is not on `device`.
    """
    try:
        import tensordict
        import torchrl
        from tensordict import TensorDict
        from tensordict.nn import TensorDictModule
        from torchrl.data import Bounded, Composite, Unbounded
        from torchrl.envs.model_based import ModelBasedEnvBase
        from torchrl.modules.planners import CEMPlanner
    except ImportError as exc:
        return _unavailable("torchrl", exc)

    device = torch.device(device)
    _check_device(model, device, "torchrl_cem")
    deter_dim, latent_dim = _latent_dims(model)
    low, high = model.action_low.to(device), model.action_high.to(device)

    class LatentEnv(ModelBasedEnvBase):
        """The world model as a batch-unlocked torchrl environment over `"latent"` `[..., D + S]`."""

        def __init__(self) -> None:
            step = TensorDictModule(
                _LatentStep(model, deter_dim), in_keys=["latent", "action"], out_keys=["latent", "reward"]
            )
            super().__init__(step, device=device)
            self.observation_spec = Composite(latent=Unbounded((latent_dim,), device=device))
            self.state_spec = Composite(latent=Unbounded((latent_dim,), device=device))
            self.action_spec = Bounded(low=low, high=high, shape=low.shape, device=device)
            self.reward_spec = Unbounded((1,), device=device)

        def _reset(self, tensordict=None, **kwargs):
            # not used by the planner (it rolls out from the given beliefs): the prior belief
            shape = tensordict.batch_size if tensordict is not None else self.batch_size
            start = model.initial(1).features()[0].to(device).expand(*shape, latent_dim)
            return TensorDict({"latent": start.clone()}, batch_size=shape, device=device)

        def any_done(self, tensordict) -> bool:
            return False

        def maybe_reset(self, tensordict):
            return tensordict

    planner = CEMPlanner(
        LatentEnv(), planning_horizon=horizon, optim_steps=iterations, num_candidates=candidates, top_k=elites,
    )

    def decide(state: LatentState) -> Tensor:
        batch = TensorDict({"latent": state.features().to(device)}, batch_size=[state.batch], device=device)
        with torch.no_grad():
            return planner(batch).get("action")

    return decide, f"torchrl {torchrl.__version__} (tensordict {tensordict.__version__})"


def pytorch_mppi(
    model: WorldModel, *, samples: int, horizon: int, device: torch.device | str,
    lambda_: float = 1.0, noise_sigma: float = 1.0, batched: bool = False,
) -> tuple[Decide, str] | None:
    """`pytorch_mppi.MPPI` (the `pytorch-mppi` package) over `model`: one MPPI update per decision.

    Written against pytorch-mppi 0.9.1 (with arm-pytorch-utilities 0.5.0), the version it was
    tested with.

    The controller's state is the latent `[deter, stoch]` `[K, D + S]`; `dynamics(latent, action)`
    is `model.imagine_step` (a prior step that samples z) on the split latent, and
    `running_cost(next_latent, action)` is `-model.reward(next belief)`, so the rollout cost is
    minus the return of `lp.Objective(model)`. MPPI adds its own perturbation cost
    `lambda_ * U^T Sigma^-1 eps` (Williams et al. 2017, Algorithm 2; zero at the cold start below,
    where U = 0) and makes a single weighted
    update of the nominal sequence U from `samples` rollouts; the first action of the updated U is
    the decision. Sampled sequences are clipped to `[model.action_low, model.action_high]`, so the
    decision (a convex combination of them) lies within the bounds.

    Cold start: before every decision the nominal sequence is set to zeros `[H, A]` (the first
    mean of our CEM) and `command` is called with `shift_nominal_trajectory=False`, so each
    decision is one MPPI iteration from the same start, comparable to one cold-start planner call
    (`MPPI.reset()` would instead draw a random nominal sequence, and `command`'s default shift
    would carry the previous decision's plan over).

    Args:
        model: any `WorldModel` on `device`.
        samples: K, sampled action sequences per belief (`num_samples`).
        horizon: H, planning steps.
        device: where the controller runs.
        lambda_: MPPI's temperature λ.
        noise_sigma: standard deviation of the action noise in every action dimension; the
            controller's covariance (pytorch_mppi's `noise_sigma`) is `noise_sigma**2 * I`.
        batched: False (default): one `MPPI` controller, called once per belief (B `command`
            calls of K rollouts each). True: `MPPI_Batched` (in pytorch-mppi 0.9.1), one call with
            `B * K` rollouts per model step, whose K noise sequences are shared by all B beliefs.
            Its controller is built on the first call for each B (which also draws a random
            nominal sequence, then replaced by zeros, from the global generator).

    Returns:
        `(decide, version)`, or None if pytorch_mppi is not installed. `decide(state)` takes
        `state [B]` and returns the first actions `[B, A]`, computed under `torch.no_grad()`.
        What it measures: B cold-start MPPI iterations of K * H model steps each, with
        pytorch_mppi's own sampling and weighting. `version` is e.g. `"pytorch-mppi 0.9.1"`.

    Raises:
        ValueError: if `model` is not on `device`.
        RuntimeError: `batched=True` with a pytorch-mppi that has no `MPPI_Batched`.
    """
    try:
        import pytorch_mppi as pm
    except ImportError as exc:
        return _unavailable("pytorch-mppi", exc)

    device = torch.device(device)
    _check_device(model, device, "pytorch_mppi")
    deter_dim, latent_dim = _latent_dims(model)
    step = _LatentStep(model, deter_dim)
    low, high = model.action_low.to(device), model.action_high.to(device)
    a = low.shape[0]
    cov = torch.eye(a, device=device) * float(noise_sigma) ** 2
    version = f"pytorch-mppi {_dist_version('pytorch-mppi') or '(unknown version)'}"

    def dynamics(latent: Tensor, action: Tensor) -> Tensor:
        return step.transition(latent, action)

    def running_cost(latent: Tensor, action: Tensor) -> Tensor:
        return -step.reward(latent)

    options = dict(num_samples=samples, horizon=horizon, device=device, lambda_=lambda_, u_min=low, u_max=high)
    if not batched:
        ctrl = pm.MPPI(
            dynamics, running_cost, latent_dim, cov, U_init=torch.zeros(horizon, a, device=device), **options
        )

        def decide(state: LatentState) -> Tensor:
            latents = state.features().to(device)
            actions = []
            with torch.no_grad():
                for latent in latents:
                    ctrl.U = torch.zeros(horizon, a, device=device)
                    actions.append(ctrl.command(latent, shift_nominal_trajectory=False).reshape(a))
            return torch.stack(actions)

        return decide, version

    if not hasattr(pm, "MPPI_Batched"):
        raise RuntimeError(f"pytorch_mppi(batched=True): {version} has no MPPI_Batched (0.9.1 has it)")
    controllers: dict[int, object] = {}  # MPPI_Batched fixes the number of beliefs at construction

    def decide_batched(state: LatentState) -> Tensor:
        b = state.batch
        if b not in controllers:
            controllers[b] = pm.MPPI_Batched(dynamics, running_cost, latent_dim, cov, num_envs=b, **options)
        ctrl = controllers[b]
        ctrl.U = torch.zeros(b, horizon, a, device=device)
        with torch.no_grad():
            return ctrl.command(state.features().to(device), shift_nominal_trajectory=False).reshape(b, a)

    return decide_batched, version + " (MPPI_Batched)"


def load_swm_solvers():
    """The module `stable_worldmodel.solver`, imported without running the package's `__init__`
    (which imports its data and environment stack: lancedb, torchvision, ...); the solvers need only
    torch, numpy, gymnasium and loguru.

    Returns:
        the module, with `CEMSolver`, `ICEMSolver`, `MPPISolver`, `GradientSolver`, ...

    Raises:
        ImportError: stable-worldmodel (or loguru) is not installed.
    """
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("stable_worldmodel")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("stable-worldmodel is not installed: pip install --no-deps stable-worldmodel==0.1.1 loguru")
    if "stable_worldmodel" not in sys.modules:
        pkg = types.ModuleType("stable_worldmodel")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["stable_worldmodel"] = pkg
    import stable_worldmodel.solver as solver

    return solver


def swm_cem(
    model: WorldModel, *, horizon: int, iterations: int, candidates: int, elites: int, device: torch.device | str,
    seed: int = 0,
) -> tuple[Decide, str] | None:
    """stable-worldmodel's `CEMSolver` (stable-worldmodel 0.1.1) over `model`: its cross-entropy method
    planning the same objective as `lp.Objective(model)`.

    Written against stable-worldmodel 0.1.1 (installed with `--no-deps`, plus loguru), the version it
    was tested with on torch 2.13.0+cpu.

    The model is given to the solver as a `Costable` whose `get_cost(info_dict, candidates [B, J, H, A])`
    clips the candidates into `[model.action_low, model.action_high]` (the solver samples unclipped,
    as our planners clip before the model sees them), rolls each of them out for H prior steps from
    the belief `info_dict["latent"]` `[B, J, D + S]` (`model.imagine_step`, which samples z from
    torch's global generator) and returns minus the undiscounted sum of `model.reward` of each
    step's next belief, `[B, J]`: minus the return of `lp.Objective(model)`.

    The solver starts every call from mean 0 and std `var_scale` = 1 (cold start; its
    `init_action` is not given), samples `candidates` sequences per belief from its own generator
    (seeded with `seed` once, at construction), sets the first candidate to the mean, keeps the
    `elites` of lowest cost, refits mean and std (with Bessel's correction) for `iterations`
    steps, and returns its final mean `[B, H, A]`; the decision is its first action, clipped into
    the bounds. Besides the Costable's rollout this is what it measures: the solver's own sampling,
    top-K and refits, one `print` of its solve time per call (sent to a discarded buffer) and its
    `inference_mode`.

    Args:
        model: any `WorldModel` on `device`.
        horizon: H, planning steps.
        iterations: refits of the sampling distribution (the solver's `n_steps`).
        candidates: J, sequences per iteration and belief (`num_samples`).
        elites: K, sequences the distribution is refitted to (`topk`).
        device: where the solver runs.
        seed: the seed of the solver's candidate generator.

    Returns:
        `(decide, version)`, or None if stable-worldmodel's solvers cannot be imported.
        `decide(state [B]) -> first actions [B, A]` plans all B beliefs in one `solve` call (the
        solver's `batch_size` is set to B on each call). `version` is e.g.
        `"stable-worldmodel 0.1.1"`.

    Raises:
        ValueError: if `model` is not on `device`, or `elites > candidates`.
    """
    try:
        solvers = load_swm_solvers()
    except ImportError as exc:
        return _unavailable("stable-worldmodel", exc)
    import contextlib
    import io
    from types import SimpleNamespace

    import gymnasium
    import numpy as np

    device = torch.device(device)
    _check_device(model, device, "swm_cem")
    if not 1 <= elites <= candidates:
        raise ValueError(f"peers.swm_cem: need 1 <= elites <= candidates; got elites={elites}, candidates={candidates}")
    deter_dim, _ = _latent_dims(model)
    step = _LatentStep(model, deter_dim)
    low, high = model.action_low.to(device), model.action_high.to(device)
    a = low.shape[0]

    class LatentCost:
        """stable-worldmodel's `Costable`: minus the model's imagined return of clipped candidates."""

        def get_cost(self, info_dict: dict, cand: Tensor) -> Tensor:
            b, j, h, _ = cand.shape
            latent = info_dict["latent"].reshape(b * j, -1)
            actions = torch.maximum(torch.minimum(cand, high), low).reshape(b * j, h, a)
            ret = torch.zeros(b * j, device=cand.device, dtype=cand.dtype)
            for t in range(h):
                latent = step.transition(latent, actions[:, t])
                ret = ret + step.reward(latent)
            return -ret.reshape(b, j)

        criterion = get_cost

    solver = solvers.CEMSolver(LatentCost(), num_samples=candidates, var_scale=1.0, n_steps=iterations, topk=elites,
                               device=device, seed=seed)
    space = gymnasium.spaces.Box(low.cpu().numpy(), high.cpu().numpy(), dtype=np.float32)
    space = gymnasium.spaces.Box(np.broadcast_to(space.low, (1, a)), np.broadcast_to(space.high, (1, a)),
                                 dtype=np.float32)
    solver.configure(action_space=space, n_envs=1, config=SimpleNamespace(horizon=horizon, action_block=1))

    def decide(state: LatentState) -> Tensor:
        solver.batch_size = state.batch
        with contextlib.redirect_stdout(io.StringIO()):
            out = solver.solve({"latent": state.features().to(device)})
        first = out["actions"][:, 0].to(device)
        return torch.maximum(torch.minimum(first, high), low)

    return decide, f"stable-worldmodel {_dist_version('stable-worldmodel') or '(unknown version)'}"


def mpc_pytorch(
    model: WorldModel, *, cost_C: Tensor, cost_c: Tensor, horizon: int, iterations: int = 100, eps: float = 1e-6,
    linesearch_decay: float = 0.2, max_linesearch_iter: int = 10, jacobians: str = "autograd",
) -> tuple[Callable[[LatentState], Tensor], str] | None:
    """mpc.pytorch's box-constrained iLQR (`mpc.mpc.MPC`, the `mpc` package; Amos, Rodriguez, Sacks,
    Boots & Kolter 2018) over a model with known dynamics (`AnalyticModel`: the belief is the state).

    Written against mpc 0.0.6 (the version it was tested with, on torch 2.13.0+cpu; its metadata asks
    for numpy < 2, but the solver itself runs with numpy 2.4 unchanged: nothing is patched).

    The problem is ours in mpc.pytorch's form. Ours: maximise `sum_{t<H} r(x_{t+1}, u_t)` with
    `r = -(1/2 z^T C z + c^T z)`, `z_t = (x_{t+1}, u_t)`. mpc.pytorch's cost is on `(x_t, u_t)` for
    `t < T` with `x_0` given, so its T = H + 1 problem has the same x-costs on `x_1..x_H` plus the
    constant cost of `x_0`, and a last action `u_H` that moves nothing (its optimum is the cost's
    minimiser in u, 0 here). The returned actions are its first H.

    Args:
        model: a deterministic `WorldModel` with an empty stochastic part (`AnalyticModel`).
        cost_C: `[n + A, n + A]` the symmetric quadratic cost C; cost_c: `[n + A]` the linear term c.
        horizon: H.
        iterations: mpc.pytorch's `lqr_iter` (the most iterations); eps: its stopping threshold on
            the norm of the full control step.
        linesearch_decay, max_linesearch_iter: its backtracking line search.
        jacobians: how mpc.pytorch gets the dynamics' Jacobians. `"autograd"`: its
            `GradMethods.AUTO_DIFF` (a Python loop over steps and state dimensions of
            `torch.autograd.grad`). `"func"`: its `GradMethods.ANALYTIC` with a `grad_input` we give
            it, computed by `torch.func.jacrev` + `vmap` over all rows at once (the way our ILQR
            linearises), so its solver is timed without its slow Jacobians.

    Returns:
        `(solve, version)` or None if mpc is not installed. `solve(state [B]) -> actions [B, H, A]`
        from a cold start (zeros), float dtype of the state, no gradient graph (`backprop=False`).

    Raises:
        ValueError: a stochastic model, or cost shapes that do not match `n + A`.
    """
    try:
        from mpc import mpc as mpc_module
    except ImportError as exc:
        return _unavailable("mpc", exc)
    from torch.func import jacrev, vmap

    deter_dim, latent_dim = _latent_dims(model)
    a = model.action_dim
    if latent_dim != deter_dim:
        raise ValueError("peers.mpc_pytorch: the model must be deterministic (an empty stochastic part)")
    if tuple(cost_C.shape) != (deter_dim + a,) * 2 or tuple(cost_c.shape) != (deter_dim + a,):
        raise ValueError(f"peers.mpc_pytorch: cost_C must be [{deter_dim + a}, {deter_dim + a}] and cost_c "
                         f"[{deter_dim + a}]; got {tuple(cost_C.shape)}, {tuple(cost_c.shape)}")
    step = _LatentStep(model, deter_dim)

    class Dynamics(nn.Module):
        def forward(self, x: Tensor, u: Tensor) -> Tensor:
            return step.transition(x, u)

        def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:  # [N, n, n], [N, n, A]
            one = lambda xi, ui: step.transition(xi[None], ui[None])[0]  # noqa: E731
            return vmap(jacrev(one, argnums=(0, 1)))(x, u)

    methods = {"autograd": mpc_module.GradMethods.AUTO_DIFF, "func": mpc_module.GradMethods.ANALYTIC}
    if jacobians not in methods:
        raise ValueError(f"peers.mpc_pytorch: jacobians must be 'autograd' or 'func'; got {jacobians!r}")
    dynamics = Dynamics()
    low, high = model.action_low, model.action_high

    def solve(state: LatentState) -> Tensor:
        b, x0 = state.batch, state.features()
        t = horizon + 1
        bounds = [bound.to(x0).expand(t, b, a).contiguous() for bound in (low, high)]
        solver = mpc_module.MPC(
            deter_dim, a, t, u_lower=bounds[0], u_upper=bounds[1], lqr_iter=iterations, eps=eps,
            grad_method=methods[jacobians], n_batch=b, linesearch_decay=linesearch_decay,
            max_linesearch_iter=max_linesearch_iter, exit_unconverged=False, detach_unconverged=False,
            backprop=False, verbose=-1,
        )
        cost = mpc_module.QuadCost(cost_C.to(x0).expand(t, b, -1, -1), cost_c.to(x0).expand(t, b, -1))
        _, u, _ = solver(x0, cost, dynamics)
        return u[:horizon].transpose(0, 1).detach()  # [T, B, A] -> [B, H, A]

    return solve, f"mpc {_dist_version('mpc') or '(unknown version)'}"


def mppi_update_agreement(
    model: WorldModel, state: LatentState, nominal: Tensor, *, samples: int, noise_sigma: float, lambda_: float,
    seed: int = 0,
) -> tuple[float, str] | None:
    """Cross-check: one MPPI update of ours against one of `pytorch_mppi.MPPI`, same settings, same noise.

    Ours is `MPPI(MPPIConfig(horizon=H, samples=K, iterations=1, noise_std=noise_sigma,
    temperature=lambda_, control_cost=True))` warm-started at `nominal`; pytorch_mppi's controller
    (the `pytorch_mppi` adapter's dynamics and running cost: minus `lp.Objective(model)`'s return)
    gets `U = nominal` and, in place of its own draw (`MPPI._sample_noise`), the perturbations our
    planner draws from `torch.Generator().manual_seed(seed)`: `noise_sigma * randn(1, K, H, A)`.
    Both clip the samples to the bounds, take the clipped perturbation for the control cost
    λ Σ_t u_tᵀ Σ⁻¹ ε_t (Williams et al. 2017, Algorithm 2) and the update, and weight by
    exp(-(S - min S) / λ). `command(..., shift_nominal_trajectory=False)` makes the one update.

    Args:
        model: any `WorldModel` (deterministic, e.g. an `AnalyticModel`, for an exact comparison).
        state: one belief, `[1]`.
        nominal: `[H, A]` the nominal sequence u (non-zero exercises the control cost).
        samples: K; noise_sigma: Σ^{1/2} in every action dimension; lambda_: λ in return units.
        seed: the seed of the shared noise.

    Returns:
        `(max |U_ours - U_pytorch_mppi|, version)` over the updated `[H, A]` sequence, or None if
        pytorch_mppi is not installed.

    Raises:
        ValueError: if `state` is not one belief or `nominal` is not `[H, A]` for the model.
    """
    try:
        import pytorch_mppi as pm
    except ImportError as exc:
        return _unavailable("pytorch-mppi", exc)
    from latentplan.planners import MPPI, MPPIConfig, Objective, Plan

    h, a = nominal.shape if nominal.dim() == 2 else (0, 0)
    if state.batch != 1 or a != model.action_dim:
        raise ValueError(f"peers.mppi_update_agreement: needs one belief and nominal [H, A={model.action_dim}]; "
                         f"got {state.batch} beliefs, nominal {tuple(nominal.shape)}")
    cfg = MPPIConfig(horizon=h, samples=samples, iterations=1, noise_std=noise_sigma, temperature=lambda_)
    ours = MPPI(cfg).plan(Objective(model), state, warm_start=Plan(nominal[None].clone(), torch.zeros(1)),
                          generator=torch.Generator().manual_seed(seed)).actions[0]
    noise = noise_sigma * torch.randn((1, samples, h, a), generator=torch.Generator().manual_seed(seed))[0]
    deter_dim, latent_dim = _latent_dims(model)
    step = _LatentStep(model, deter_dim)
    ctrl = pm.MPPI(lambda x, u: step.transition(x, u), lambda x, u: -step.reward(x), latent_dim,
                   torch.eye(a) * float(noise_sigma) ** 2, num_samples=samples, horizon=h, lambda_=lambda_,
                   u_min=model.action_low, u_max=model.action_high, U_init=nominal.clone())
    ctrl.U = nominal.clone()
    ctrl._sample_noise = lambda shape: noise.clone()
    with torch.no_grad():
        ctrl.command(state.features()[0], shift_nominal_trajectory=False)
    version = f"pytorch-mppi {_dist_version('pytorch-mppi') or '(unknown version)'}"
    return (ours - ctrl.U).abs().max().item(), version


class _LatentStep(nn.Module):
    """The world model on the concatenated latent `[..., D + S]` (any leading dimensions).

    `forward(latent, action [..., A]) -> (next latent [..., D + S], reward [..., 1])`: one prior
    step (`imagine_step`, sampling z from torch's global generator) and the model's reward of the
    next belief. `transition` and `reward` are the two halves.
    """

    def __init__(self, model: WorldModel, deter_dim: int) -> None:
        super().__init__()
        self.model = model
        self.deter_dim = deter_dim

    def _belief(self, latent: Tensor) -> LatentState:
        flat = latent.reshape(-1, latent.shape[-1])
        return LatentState(flat[:, : self.deter_dim], flat[:, self.deter_dim :])

    def transition(self, latent: Tensor, action: Tensor) -> Tensor:
        """`latent [..., D + S]`, `action [..., A]` -> next latent `[..., D + S]`."""
        nxt = self.model.imagine_step(self._belief(latent), action.reshape(-1, action.shape[-1]))
        return nxt.features().reshape(latent.shape)

    def reward(self, latent: Tensor) -> Tensor:
        """`latent [..., D + S]` -> `model.reward` `[...]`."""
        return self.model.reward(self._belief(latent)).reshape(latent.shape[:-1])

    def forward(self, latent: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        nxt = self.transition(latent, action)
        return nxt, self.reward(nxt).unsqueeze(-1)


def _latent_dims(model: WorldModel) -> tuple[int, int]:
    """`(D, D + S)` of the model's beliefs."""
    probe = model.initial(1)
    return probe.deter.shape[1], probe.deter.shape[1] + probe.stoch.shape[1]


def _check_device(model: WorldModel, device: torch.device, fn: str) -> None:
    have = model.action_low.device
    if (have.type, have.index or 0) != (device.type, device.index or 0):
        raise ValueError(f"peers.{fn}: the model is on {have} but device is {device}; move the model first")


def _dist_version(dist: str) -> str | None:
    """The installed version of the distribution `dist` (a pip name), or None if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _unavailable(dist: str, exc: ImportError) -> None:
    """The adapters' None for a peer that cannot be imported; warns unless it is simply not installed."""
    installed = _dist_version(dist)
    if installed is not None:
        warnings.warn(
            f"benchmarks.peers: {dist} {installed} is installed but cannot be imported with torch "
            f"{torch.__version__} ({type(exc).__name__}: {exc}); it is left out",
            RuntimeWarning, stacklevel=3,
        )
    return None


if __name__ == "__main__":  # python benchmarks/peers.py: the cross-checks on the LQ test system
    from latentplan.envs.lqr import LinearQuadratic
    from latentplan.worldmodels import AnalyticModel

    lq = LinearQuadratic(action_bound=10.0)
    lq_model = AnalyticModel.linear(lq.A, lq.B, lq.Q, action_bound=10.0)
    belief = lq_model.from_observation(torch.tensor([[1.0, 0.0]]))
    u0 = torch.linspace(-2.0, 1.0, 12)[:, None]  # a non-zero nominal, so the control cost counts
    for sigma, lam in ((1.0, 1.0), (1.0, 10.0), (5.0, 1.0)):
        out = mppi_update_agreement(lq_model, belief, u0, samples=1000, noise_sigma=sigma, lambda_=lam)
        print("pytorch-mppi not installed" if out is None else
              f"noise_sigma={sigma} lambda={lam}: max |U_ours - U_peer| = {out[0]:.2e} ({out[1]})")
    # the CEMs at PlaNet's settings from two beliefs: ours and the two peers' first actions
    from latentplan.planners import CEM, CEMConfig, Objective

    two = lq_model.from_observation(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.manual_seed(0)
    ours = CEM(CEMConfig(horizon=12, iterations=10, candidates=1000, elites=100)).plan(
        Objective(lq_model), two, generator=torch.Generator().manual_seed(0)).actions[:, 0, 0]
    print(f"CEM H=12 I=10 J=1000 K=100, first actions from x0 = (1, 0) and (0, 1): ours {ours.tolist()}")
    for make in (torchrl_cem, swm_cem):
        peer = make(lq_model, horizon=12, iterations=10, candidates=1000, elites=100, device="cpu")
        if peer is not None:
            first = peer[0](two)[:, 0]
            print(f"  {peer[1]}: {first.tolist()} (max |difference| {(first - ours).abs().max().item():.3f})")
