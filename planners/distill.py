"""Distilling a planner into a policy network that acts in one forward pass.

An expensive planner (CEM, MCTS, the gradient planner) is amortised into a network on the latent
features, as AlphaZero trains its policy head on the visit counts of its search (Silver et al.
2017, 2018) and as DAgger trains a student on the expert's labels of the states the student
itself visits (Ross, Gordon & Bagnell 2011). The student is a `GaussianPolicy`
(`planners.policy`).

This module holds the distillation losses (`action_loss`, `visit_loss`, `plan_targets`) and the
learner (`Distiller`, `DistillConfig`). Collecting states in environments (DAgger rounds, the
offline run on a checkpoint, the `latentplan distill` command) lives in the facade,
`latentplan.distillation`.

Shapes: N beliefs (rows of a `LatentState`), F = D + S latent features, A action dimensions,
H the horizon, K sampled actions of an MCTS root.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from latentplan.worldmodels.state import LatentState

from .validate import check_choice, check_int, check_min, check_positive, check_range
from .base import Plan, Planner
from .objective import Objective
from .policy import GaussianPolicy, PolicyConfig, gaussian_log_density

__all__ = ["DistillConfig", "Distiller", "action_loss", "plan_targets", "visit_loss"]

_DISTILLER_FORMAT = "latentplan-distiller-1"


# --------------------------------------------------------------------------- losses


def action_loss(
    policy: GaussianPolicy,
    features: Tensor,
    actions: Tensor,
    weights: Tensor | None = None,
    *,
    kind: Literal["nll", "mse"] = "nll",
) -> Tensor:
    """Distillation loss on target actions (a teacher's first action, or its plan's actions).

    Args:
        policy: the student.
        features: `[N, F]` latent features of the beliefs.
        actions: `[N, A]` target actions within the bounds.
        weights: `[N]` non-negative sample weights (default 1); the loss is their weighted mean.
        kind: `"nll"`: the negative log-likelihood of the targets under the squashed Gaussian
            (`-log_prob`, which trains mean and std together; Gaussian behaviour cloning).
            `"mse"`: the squared error of the deterministic action in half-range units,
            `sum_a ((squash(mu) - a) / half)^2`, which is robust to targets at the bounds (CEM's
            clipped actions), plus the NLL with the mean detached so the standard deviation
            still learns the teacher's spread (for sampling proposals).

    Returns:
        A scalar loss.

    Raises:
        ValueError: on an unknown `kind` or mismatched shapes.
    """
    n = features.shape[0]
    if actions.shape != (n, policy.action_dim):
        raise ValueError(f"action_loss: actions must be [N={n}, A={policy.action_dim}]; got {tuple(actions.shape)}")
    w = torch.ones(n, device=features.device) if weights is None else weights
    if w.shape != (n,):
        raise ValueError(f"action_loss: weights must be [N={n}]; got {tuple(w.shape)}")
    mean, log_std = policy(features)
    u = policy.unsquash(actions)
    if kind == "nll":
        per = -_gauss_logp(u, mean, log_std) + policy.log_det_jacobian(u).sum(-1)
    elif kind == "mse":
        err = (policy.squash(mean) - actions) / policy.half_range
        per = (err**2).sum(-1) - _gauss_logp(u, mean.detach(), log_std)
    else:
        raise ValueError(f"action_loss: kind must be 'nll' or 'mse'; got {kind!r}")
    return (w * per).sum() / w.sum().clamp_min(1e-12)


def visit_loss(policy: GaussianPolicy, features: Tensor, root_actions: Tensor, root_policy: Tensor) -> Tensor:
    """Cross-entropy between an MCTS root's visit distribution and the policy, over the sampled actions.

    `loss = mean_n [ -sum_k pi_nk log p_theta(a_nk | s_n) ]`, the policy target of Sampled
    MuZero (Hubert et al. 2021, Sec. 4: the visit distribution over the K actions sampled at the
    root, used as the target of the policy's log-likelihood). Its minimiser for a Gaussian in
    u-space matches the visit-weighted mean and variance of the unsquashed root actions.

    Args:
        policy: the student.
        features: `[N, F]` features of the root beliefs.
        root_actions: `[N, K, A]` the root's sampled actions (`Plan.info["root_actions"]`).
        root_policy: `[N, K]` the visit distribution (`Plan.info["root_policy"]`, rows summing to 1;
            rows are renormalised here).

    Returns:
        A scalar loss.

    Raises:
        ValueError: on mismatched shapes or a row of `root_policy` with no positive mass.
    """
    n = features.shape[0]
    if root_actions.dim() != 3 or root_actions.shape[0] != n or root_actions.shape[2] != policy.action_dim:
        raise ValueError(f"visit_loss: root_actions must be [N={n}, K, A={policy.action_dim}]; got {tuple(root_actions.shape)}")
    if root_policy.shape != root_actions.shape[:2]:
        raise ValueError(f"visit_loss: root_policy must be [N, K]={tuple(root_actions.shape[:2])}; got {tuple(root_policy.shape)}")
    mass = root_policy.clamp_min(0).sum(-1, keepdim=True)
    if bool((mass <= 0).any()):
        raise ValueError("visit_loss: a row of root_policy has no positive mass")
    pi = root_policy.clamp_min(0) / mass
    logp = policy.log_prob(features, root_actions)  # [N, K]
    return -(pi * logp).sum(-1).mean()


def _gauss_logp(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    return gaussian_log_density(u, mean, log_std).sum(-1)


def _rows(mask: Tensor, most: int = 8) -> str:
    """The indices where the `[N]` bool `mask` is set, as text (the first `most`, then a count)."""
    idx = mask.nonzero().flatten().tolist()
    return str(idx) if len(idx) <= most else f"{idx[:most]} and {len(idx) - most} more"


def _finite_rows(**tensors: Tensor) -> Tensor:
    """`[N]` bool: the rows where every tensor (`[N, ...]`) is finite."""
    ok = None
    for t in tensors.values():
        r = _finite(t)
        ok = r if ok is None else ok & r
    return ok


def _finite(t: Tensor) -> Tensor:
    """`[N]` bool: the rows of `t [N, ...]` without NaN/inf (also for N = 0)."""
    fin = torch.isfinite(t)
    return fin.all(dim=tuple(range(1, fin.dim()))) if fin.dim() > 1 else fin


def _check_finite(where: str, **tensors: Tensor) -> None:
    """Raise a `ValueError` naming the tensor and rows with NaN/inf."""
    for name, t in tensors.items():
        bad = ~_finite(t)
        if bool(bad.any()):
            raise ValueError(f"Distiller.{where}: {name} has NaN/inf in rows {_rows(bad)}")


def plan_targets(
    objective: Objective,
    state: LatentState,
    plan: Plan,
    *,
    decay: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[LatentState, Tensor, Tensor, int]:
    """The whole plan as targets: the beliefs along the teacher's imagined trajectory, each with
    the action the teacher planned there.

    s_0 = `state`, s_{t+1} = `imagine_step(s_t, plan.actions[:, t])`; target (s_t, a_t) with
    weight `decay**t` for t < H (later actions of an open-loop plan are less reliable).

    Args:
        objective: gives the model.
        state: `[B]` beliefs the plan was made for.
        plan: the teacher's `Plan`, `actions [B, H, A]`.
        decay: weight factor per step, in (0, 1].
        generator: randomness of the model's stochastic transitions.

    Returns:
        `(states [B * H], actions [B * H, A], weights [B * H], model_evals)`, time-major
        (rows `t * B + b`); `model_evals = B * (H - 1)`.

    Raises:
        ValueError: if the plan does not match `state`, or `decay` is not in (0, 1].
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"plan_targets: decay must be in (0, 1]; got {decay}")
    b, h, a = plan.actions.shape
    if b != state.batch:
        raise ValueError(f"plan_targets: plan.actions is for B={b} but state has {state.batch} rows")
    states, acts, weights = [state], [plan.actions[:, 0]], [torch.ones(b, device=state.device)]
    s = state
    for t in range(1, h):
        s = objective.model.imagine_step(s, plan.actions[:, t - 1], generator=generator)
        states.append(s)
        acts.append(plan.actions[:, t])
        weights.append(torch.full((b,), decay**t, device=state.device))
    return LatentState.cat(states), torch.cat(acts), torch.cat(weights), b * (h - 1)


# --------------------------------------------------------------------------- the learner


@dataclass(frozen=True)
class DistillConfig:
    """Settings of `Distiller`.

    Attributes:
        policy: the student's architecture (`PolicyConfig`).
        target: what is distilled. `"action"`: the teacher's first action at each labelled
            belief. `"plan"`: its whole plan, each action at the belief the model imagines for it
            (`plan_targets`). `"visits"`: for MCTS, the visit distribution over the root's
            sampled actions (`visit_loss`; needs `Plan.info["root_actions"]` `[B, K, A]` and
            `Plan.info["root_policy"]` `[B, K]`).
        loss: for `"action"`/`"plan"` targets, `"nll"` (Gaussian log-likelihood of the
            squashed policy, the default) or `"mse"` (squared error of the deterministic action,
            std by likelihood); see `action_loss`. The NLL student did better on cartpole-swingup
            (docs/planners.md, Distillation), plausibly because the squared error of a tanh
            output has vanishing gradients where CEM's labels sit at the bounds.
        plan_decay: weight `decay**t` of the plan's step t (target `"plan"`), in (0, 1].
        lr: Adam learning rate.
        weight_decay: Adam's L2 weight decay.
        batch_size: labelled samples per gradient step (drawn uniformly with replacement).
        steps_per_update: gradient steps per `update` call.
        labels_per_update: beliefs relabelled per `update` call, drawn uniformly without
            replacement from the ones given (all of them if fewer, or if 0).
        label_batch: beliefs per call of the teacher's `plan` (bounds its memory; larger
            batches amortise the teacher's per-call overhead).
        capacity: labelled samples kept; the oldest are dropped first (DAgger's aggregated
            data set, bounded). Inside a training loop whose model keeps changing, keep it
            small: old features drift from what the current model produces.
        grad_clip: gradient-norm clip per step (`None`: none).
        init_seed: seed of the policy's initial weights, drawn inside `torch.random.fork_rng`
            so the global generator is left as it was; `None` draws them from the global
            generator. (With `loss="mse"` the fit depends on it more: on the LQ test system an
            initialisation can stall with a saturated tanh, which `"nll"` avoids.)

    Raises:
        ValueError: naming the field that is out of range.
    """

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    target: Literal["action", "plan", "visits"] = "action"
    loss: Literal["mse", "nll"] = "nll"
    plan_decay: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    steps_per_update: int = 10
    labels_per_update: int = 64
    label_batch: int = 32
    capacity: int = 100_000
    grad_clip: float | None = 10.0
    init_seed: int | None = None

    def __post_init__(self) -> None:
        check_choice(self, "target", ("action", "plan", "visits"))
        check_choice(self, "loss", ("mse", "nll"))
        check_range(self, "plan_decay", 0.0, 1.0, low_open=True)
        check_positive(self, "lr")
        check_min(self, 0.0, "weight_decay")
        check_int(self, "batch_size", "label_batch", "capacity", minimum=1)
        check_int(self, "steps_per_update", "labels_per_update", minimum=0)
        check_positive(self, "grad_clip", optional=True)

    def to_dict(self) -> dict:
        """Plain-Python form (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["policy"] = PolicyConfig(**d["policy"])
        return cls(**d)


class Distiller:
    """Distils any teacher `Planner` into a `GaussianPolicy`: relabel beliefs with the teacher's
    plans, aggregate the labels, take gradient steps on the student.

    The data set aggregates every label ever made (up to `capacity`), as DAgger does: the
    beliefs may come from a replay buffer, from episodes the student acted in (DAgger rounds,
    see `latentplan.distillation`), or from a training loop's posterior batch. Labels are made
    by calling `teacher.plan(objective_factory(model), beliefs)` on batches of beliefs.

    Args:
        config: `DistillConfig` (defaults if `None`).
        feature_dim: F = D + S, the size of the world model's `LatentState.features()`.
        action_dim: A.
        low: `[A]` lower action bounds (the model's `action_low`).
        high: `[A]` upper action bounds.
        device: where the policy and the data set live.

    Attributes:
        policy: the student, a `GaussianPolicy` (use it with `PolicyPlanner`, or as a proposal).
        optimizer: its Adam optimizer.
        steps: gradient steps taken; labels: labels made (over the distiller's life);
            skipped: teacher labels left out as unusable (NaN/inf, see `add_plan`).
        history: `(step, loss)` of every gradient step (for loss curves).

    Main API (what a training loop calls):

    - `update(model, states, teacher, objective_factory, *, generator) -> dict[str, float]`:
      relabel `labels_per_update` of `states [N]` and take `steps_per_update` gradient steps;
      returns `loss`, `labels`, `skipped`, `dataset`, `teacher_ms` (per label), `model_evals`
      (teacher's imagined transitions per label), `steps`.
    - `relabel(...)`, `train(steps, generator=)`: the two halves separately (offline runs label
      everything first, then fit); `add_plan(objective, states, plan)` stores a plan the caller
      already has (e.g. when the teacher acted), `add_labels(...)` raw labels.
    - `state_dict()` / `load_state_dict()`: policy, optimizer, data set and counters (tensors and
      plain Python only: `torch.load(..., weights_only=True)` reads them).

    Raises:
        ValueError: from `GaussianPolicy` on bad sizes or bounds; from `relabel` on beliefs with
            the wrong feature size, a model whose action size or bounds are not the policy's,
            or (target `"visits"`) a teacher plan without `info["root_actions"]`/
            `info["root_policy"]`; from `add_labels` on NaN/inf or negative labels; from `train`
            when there is no data or `steps` is not an int >= 0; from `load_state_dict` on a
            state of another policy, box or target.

    Source: policy distillation from search as in AlphaZero (Silver et al. 2018) and Sampled
    MuZero (Hubert et al. 2021); data aggregation: DAgger (Ross, Gordon & Bagnell 2011,
    "A Reduction of Imitation Learning and Structured Prediction to No-Regret Online
    Learning", AISTATS).
    """

    def __init__(
        self,
        config: DistillConfig | None,
        feature_dim: int,
        action_dim: int,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = c = config or DistillConfig()
        self.device = torch.device(device)
        if c.init_seed is None:
            policy = GaussianPolicy(feature_dim, action_dim, low, high, c.policy)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.init_seed)
                policy = GaussianPolicy(feature_dim, action_dim, low, high, c.policy)
        self.policy = policy.to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.steps = 0
        self.labels = 0
        self.skipped = 0
        self.history: list[tuple[int, float]] = []
        self._data: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"Distiller(target={self.config.target!r}, loss={self.config.loss!r}, dataset={len(self)}, steps={self.steps})"

    def __len__(self) -> int:
        """Labelled samples held."""
        return 0 if not self._data else int(self._data["features"].shape[0])

    # ------------------------------------------------------------------ data
    def add_labels(
        self,
        features: Tensor,
        *,
        actions: Tensor | None = None,
        weights: Tensor | None = None,
        root_actions: Tensor | None = None,
        root_policy: Tensor | None = None,
    ) -> int:
        """Add labelled samples to the data set (dropping the oldest past `capacity`).

        Args:
            features: `[N, F]` latent features.
            actions: `[N, A]` target actions (targets `"action"`/`"plan"`).
            weights: `[N]` sample weights (default 1; targets `"action"`/`"plan"`).
            root_actions: `[N, K, A]` and `root_policy` `[N, K]` (target `"visits"`).

        Returns:
            The number of samples added.

        Raises:
            ValueError: if the labels do not fit the configured target or the shapes disagree;
                if any feature, action, weight, root action or visit probability is NaN/inf
                (a NaN label would turn every weight of the student into NaN at the next
                gradient step); if a weight or a visit probability is negative; or if a row of
                `root_policy` has no positive mass. Nothing is stored then. (`add_plan` and
                `relabel` leave such rows out and count them instead.)
        """
        f = features.detach().to(self.device, torch.float32)
        n = f.shape[0]
        if f.dim() != 2 or f.shape[1] != self.policy.feature_dim:
            raise ValueError(f"Distiller.add_labels: features must be [N, F={self.policy.feature_dim}]; got {tuple(f.shape)}")
        if self.config.target == "visits":
            if root_actions is None or root_policy is None:
                raise ValueError("Distiller.add_labels: target 'visits' needs root_actions [N, K, A] and root_policy [N, K]")
            ra = root_actions.detach().to(self.device, torch.float32)
            rp = root_policy.detach().to(self.device, torch.float32)
            if ra.dim() != 3 or ra.shape[0] != n or ra.shape[2] != self.policy.action_dim or rp.shape != ra.shape[:2]:
                raise ValueError(
                    f"Distiller.add_labels: root_actions must be [N={n}, K, A={self.policy.action_dim}] and root_policy "
                    f"[N, K]; got {tuple(ra.shape)}, {tuple(rp.shape)}"
                )
            _check_finite("add_labels", features=f, root_actions=ra, root_policy=rp)
            if bool((rp < 0).any()):
                raise ValueError("Distiller.add_labels: root_policy has negative probabilities")
            empty = rp.sum(-1) <= 0
            if bool(empty.any()):
                raise ValueError(
                    f"Distiller.add_labels: root_policy rows {_rows(empty)} have no positive mass (nothing to imitate there)"
                )
            new = {"features": f, "root_actions": ra, "root_policy": rp}
        else:
            if actions is None:
                raise ValueError(f"Distiller.add_labels: target {self.config.target!r} needs actions [N, A]")
            act = actions.detach().to(self.device, torch.float32)
            if act.shape != (n, self.policy.action_dim):
                raise ValueError(f"Distiller.add_labels: actions must be [N={n}, A={self.policy.action_dim}]; got {tuple(act.shape)}")
            w = torch.ones(n, device=self.device) if weights is None else weights.detach().to(self.device, torch.float32)
            if w.shape != (n,):
                raise ValueError(f"Distiller.add_labels: weights must be [N={n}]; got {tuple(w.shape)}")
            _check_finite("add_labels", features=f, actions=act, weights=w)
            if bool((w < 0).any()):
                raise ValueError(f"Distiller.add_labels: weights must be >= 0; rows {_rows(w < 0)} are negative")
            new = {"features": f, "actions": act, "weights": w}
        if n == 0:
            return 0
        if self._data:
            if set(self._data) != set(new) or any(self._data[k].shape[1:] != new[k].shape[1:] for k in new):
                raise ValueError(
                    "Distiller.add_labels: new labels do not match the stored ones "
                    f"({ {k: tuple(v.shape[1:]) for k, v in self._data.items()} } vs { {k: tuple(v.shape[1:]) for k, v in new.items()} })"
                )
            new = {k: torch.cat([self._data[k], v]) for k, v in new.items()}
        cap = self.config.capacity
        self._data = {k: v[-cap:] for k, v in new.items()}
        self.labels += n
        return n

    def relabel(
        self,
        model: Any,
        states: LatentState,
        teacher: Planner,
        objective_factory: Callable[[Any], Objective],
        *,
        generator: torch.Generator | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """Ask the teacher for plans at every belief in `states [N]` and store the labels.

        Args:
            model: the world model the beliefs belong to.
            states: `[N]` beliefs (detached here).
            teacher: any `Planner`; called on batches of `label_batch` beliefs.
            objective_factory: `model -> Objective`, as `Agent(objective=...)` takes it.
            generator: the teacher's (and, for target `"plan"`, the model's) randomness.
            progress: called with the number of beliefs labelled after every teacher call.

        Returns:
            `labels` (samples added), `skipped` (rows left out: NaN/inf beliefs or teacher
            labels, see `add_plan`), `teacher_ms` (wall milliseconds per belief),
            `model_evals` (the teacher's imagined transitions per belief).

        Raises:
            ValueError: on beliefs with the wrong feature size, a model whose action size or
                bounds differ from the policy's (`check_model`; raised before the teacher
                runs), or a plan without the keys the target needs.
        """
        states = states.detach()
        self.check_model(model, "relabel")
        if states.features().shape[1] != self.policy.feature_dim:
            raise ValueError(
                f"Distiller.relabel: beliefs have {states.features().shape[1]} features; the policy takes {self.policy.feature_dim}"
            )
        c = self.config
        n = states.batch
        skipped0 = self.skipped
        added, evals, t0 = 0, 0, time.perf_counter()
        for start in range(0, n, c.label_batch):
            s = states.index(slice(start, min(start + c.label_batch, n)))
            objective = objective_factory(model)
            with torch.no_grad():
                plan = teacher.plan(objective, s, generator=generator)
            evals += int(plan.info.get("model_evals", 0))
            added += self.add_plan(objective, s, plan, generator=generator)
            if progress is not None:
                progress(s.batch)
        ms = (time.perf_counter() - t0) * 1e3
        return {"labels": float(added), "skipped": float(self.skipped - skipped0), "teacher_ms": ms / max(n, 1),
                "model_evals": evals / max(n, 1)}

    def check_model(self, model: Any, where: str = "check_model") -> None:
        """Check that `model`'s actions are the policy's: the same A and the same bounds.

        A teacher planning in a wider box than the policy's gives labels the squashed policy can
        never produce (they would be clipped to its bounds while learning); a narrower box gives
        a student that acts where the model cannot.

        Raises:
            ValueError: naming both sizes or both bounds if they differ (bounds compared in
                float32, to 1e-6 of the range).
        """
        a = int(model.action_dim)
        if a != self.policy.action_dim:
            raise ValueError(f"Distiller.{where}: the model has A={a} action dimensions; the policy has "
                             f"A={self.policy.action_dim}")
        p_low, p_high = self.policy.action_low, self.policy.action_high
        low = torch.as_tensor(model.action_low).detach().to(p_low.device, torch.float32).reshape(-1)
        high = torch.as_tensor(model.action_high).detach().to(p_low.device, torch.float32).reshape(-1)
        tol = 1e-6 * (p_high - p_low).abs().clamp_min(1.0)
        if not (bool(((low - p_low).abs() <= tol).all()) and bool(((high - p_high).abs() <= tol).all())):
            raise ValueError(
                f"Distiller.{where}: the model's action bounds [{low.tolist()}, {high.tolist()}] differ from the "
                f"policy's [{p_low.tolist()}, {p_high.tolist()}]; build the Distiller with the model's action_low/high"
            )

    def add_plan(
        self,
        objective: Objective,
        states: LatentState,
        plan: Plan,
        *,
        generator: torch.Generator | None = None,
    ) -> int:
        """Turn a teacher's `plan` for `states [B]` into labels of the configured target and store them.

        Args:
            objective: the objective the plan was made for (its model imagines the plan's
                beliefs for target `"plan"`).
            states: `[B]` the beliefs the plan was made for.
            plan: the teacher's `Plan` (`actions [B, H, A]`; for target `"visits"` also
                `info["root_actions"]` `[B, K, A]` and `info["root_policy"]` `[B, K]`).
            generator: the model's randomness for target `"plan"`.

        Rows that cannot be learnt from are left out and counted in `skipped`: a NaN/inf in
        the belief's features or in the teacher's label (a failed plan; for target `"plan"` also
        every later step of that plan, whose imagined beliefs follow from it), and for target
        `"visits"` a root whose visit distribution has no positive mass.

        Returns:
            The number of samples added (`B`, or `B * H` for target `"plan"`, less the rows
            left out).

        Raises:
            ValueError: if the plan lacks what the target needs or does not match `states`.
        """
        c = self.config
        states = states.detach()
        if plan.actions.shape[0] != states.batch:
            raise ValueError(f"Distiller.add_plan: plan is for B={plan.actions.shape[0]} beliefs, states has {states.batch}")
        with torch.no_grad():
            if c.target == "visits":
                if "root_actions" not in plan.info or "root_policy" not in plan.info:
                    raise ValueError(
                        "Distiller: target 'visits' needs the teacher's Plan.info['root_actions'] [B, K, A] and "
                        f"Plan.info['root_policy'] [B, K] (as MCTS reports them); the plan's info has {sorted(plan.info)}"
                    )
                f, ra, rp = states.features(), plan.info["root_actions"], plan.info["root_policy"]
                ok = torch.ones(f.shape[0], dtype=torch.bool, device=f.device)
                if ra.dim() == 3 and rp.dim() == 2 and ra.shape[0] == rp.shape[0] == f.shape[0]:  # else add_labels names the shapes
                    ok = _finite_rows(features=f, root_actions=ra, root_policy=rp) & (rp >= 0).all(-1) & (rp.sum(-1) > 0)
                return self._add_kept(ok, f, root_actions=ra, root_policy=rp)
            if c.target == "plan":
                ps, pa, pw, _ = plan_targets(objective, states, plan, decay=c.plan_decay, generator=generator)
                f = ps.features()
                ok = _finite_rows(features=f, actions=pa)
                # a failed step t of a plan: its later steps start from beliefs imagined through it
                b, h = states.batch, plan.actions.shape[1]
                ok = ok.reshape(h, b).to(torch.int64).cummin(0).values.bool().reshape(-1) if b else ok
                return self._add_kept(ok, f, actions=pa, weights=pw)
            f, a = states.features(), plan.first_action
            return self._add_kept(_finite_rows(features=f, actions=a), f, actions=a)

    def _add_kept(self, ok: Tensor, features: Tensor, **labels: Tensor) -> int:
        """`add_labels` on the rows `ok [N]` (bool); the others are counted in `skipped`."""
        ok = ok.to(features.device)
        n_bad = int((~ok).sum())
        if n_bad:
            self.skipped += n_bad
            features = features[ok]
            labels = {k: v[ok.to(v.device)] for k, v in labels.items()}
        return self.add_labels(features, **labels)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The configured distillation loss on a batch of stored samples (keys as in `add_labels`)."""
        if self.config.target == "visits":
            return visit_loss(self.policy, batch["features"], batch["root_actions"], batch["root_policy"])
        return action_loss(self.policy, batch["features"], batch["actions"], batch["weights"], kind=self.config.loss)

    def train(self, steps: int, *, generator: torch.Generator | None = None, progress: Callable[[float], None] | None = None) -> dict[str, float]:
        """Take `steps` Adam steps on minibatches of `batch_size` drawn uniformly from the data set.

        Args:
            steps: gradient steps (0 does nothing).
            generator: randomness of the minibatch draws.
            progress: called with the loss after every step.

        Returns:
            `loss` (mean over the steps; NaN if none), `steps` (total so far), `dataset`.

        Raises:
            ValueError: if `steps` is not an int >= 0, or the data set is empty and `steps > 0`.
        """
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"Distiller.train: steps must be an int >= 0; got {steps!r}")
        if steps > 0 and not self._data:
            raise ValueError("Distiller.train: no labelled data yet (call relabel/add_labels first)")
        losses = []
        self.policy.train()
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        n = len(self)
        for _ in range(steps):
            idx = torch.randint(0, n, (self.config.batch_size,), generator=generator, device=gen_dev).to(self.device)
            loss = self.loss({k: v[idx] for k, v in self._data.items()})
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.steps += 1
            value = float(loss.detach())
            self.history.append((self.steps, value))
            losses.append(value)
            if progress is not None:
                progress(value)
        self.policy.eval()
        return {"loss": sum(losses) / len(losses) if losses else float("nan"), "steps": float(self.steps), "dataset": float(len(self))}

    def update(
        self,
        model: Any,
        states: LatentState,
        teacher: Planner,
        objective_factory: Callable[[Any], Objective],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """Relabel up to `labels_per_update` of `states [N]` (a uniform subset drawn with
        `generator`) with the teacher, then take `steps_per_update` gradient steps.

        Returns:
            `loss`, `labels` (added now), `skipped` (left out now, see `add_plan`), `dataset`,
            `teacher_ms` (per label), `model_evals` (teacher's, per label), `steps` (total).

        Raises:
            ValueError: as `relabel` and `train`.
        """
        c = self.config
        n = states.batch
        if c.labels_per_update and n > c.labels_per_update:
            gen_dev = generator.device if generator is not None else torch.device("cpu")
            idx = torch.randperm(n, generator=generator, device=gen_dev)[: c.labels_per_update].to(states.device)
            states = states.index(idx)
        out = self.relabel(model, states, teacher, objective_factory, generator=generator)
        out.update(self.train(c.steps_per_update, generator=generator))
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Policy weights and action bounds, optimizer state, data set and counters (weights-only
        loadable)."""
        return {
            "format": _DISTILLER_FORMAT,
            "config": self.config.to_dict(),
            "policy": {k: v.detach().clone() for k, v in self.policy.state_dict().items()},
            "low": self.policy.action_low.cpu().tolist(),
            "high": self.policy.action_high.cpu().tolist(),
            "optimizer": self.optimizer.state_dict(),
            "data": {k: v.clone() for k, v in self._data.items()},
            "steps": self.steps,
            "labels": self.labels,
            "skipped": self.skipped,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (to resume distilling).

        This distiller's own config stays in force: the optimizer keeps this config's `lr` and
        `weight_decay` (torch's `Optimizer.load_state_dict` would bring back the stored ones),
        and a data set larger than this `capacity` keeps its newest `capacity` samples.

        Raises:
            ValueError: if `state` is not a distiller state; its policy does not fit this one
                (architecture, or the action bounds, when stored: a squashed policy acts
                differently in another box); or its data set holds labels of another target
                (`"visits"` against `"action"`/`"plan"`).
        """
        if not isinstance(state, dict) or state.get("format") != _DISTILLER_FORMAT:
            raise ValueError("Distiller.load_state_dict: not a Distiller state_dict")
        if "low" in state and "high" in state:
            low, high = torch.tensor(state["low"]), torch.tensor(state["high"])
            if low.shape != self.policy.action_low.shape or not (
                torch.allclose(low, self.policy.action_low.cpu()) and torch.allclose(high, self.policy.action_high.cpu())
            ):
                raise ValueError(
                    f"Distiller.load_state_dict: the stored policy acts in [{state['low']}, {state['high']}], this one in "
                    f"[{self.policy.action_low.tolist()}, {self.policy.action_high.tolist()}]"
                )
        data = state["data"]
        want = {"features", "root_actions", "root_policy"} if self.config.target == "visits" else {"features", "actions", "weights"}
        if data and set(data) != want:
            raise ValueError(
                f"Distiller.load_state_dict: the stored data set has {sorted(data)}, the labels of another target; this "
                f"distiller's target {self.config.target!r} needs {sorted(want)}"
            )
        try:
            self.policy.load_state_dict(state["policy"])
        except RuntimeError as e:
            raise ValueError(f"Distiller.load_state_dict: the stored policy does not fit this one: {e}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # this config's rates, not the stored ones
            group["lr"], group["weight_decay"] = self.config.lr, self.config.weight_decay
        cap = self.config.capacity
        self._data = {k: v[-cap:].to(self.device) for k, v in data.items()}
        self.steps = int(state["steps"])
        self.labels = int(state["labels"])
        self.skipped = int(state.get("skipped", 0))
        self.history = [(int(s), float(l)) for s, l in state.get("history", [])]
