"""A learned value function on latent beliefs, trained by TD(λ) on imagined rollouts.

The critic `V(belief) -> [N]` is an MLP on the latent features `[N, D + S]`. Its targets are
λ-returns (Sutton 1988; Sutton & Barto 2018, Sec. 12.1) of rollouts imagined in the world model
under a given behaviour (a policy, or a planner whose plans are followed), bootstrapped with a
slowly updated target network (Mnih et al. 2015), as Dreamer trains its critic (Hafner et al.
2020, "Dream to Control", Eq. 6-8). Targets are normalised by PopArt (van Hasselt et al. 2016,
"Learning values across many orders of magnitude"): the network predicts standardised returns
and its output layer is rescaled whenever the statistics move, so the critic's outputs do not
jump. A trained critic is the `value=` of any `Objective`: CEM, the gradient planner and MCTS
then bootstrap at their horizon with it.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from latentplan.worldmodels.filtering import filter_episodes
from latentplan.worldmodels.state import LatentState, WorldModel

from .validate import check_int, check_positive, check_range
from .base import Planner, Policy
from .objective import Objective, discounted

__all__ = ["ImaginedRollout", "ValueConfig", "ValueFunction", "ValueLearner", "lambda_returns", "posterior_beliefs"]


@dataclass(frozen=True)
class ValueConfig:
    """Settings of `ValueLearner`.

    Attributes:
        discount: γ per model step (one decision; Dreamer: 0.99).
        td_lambda: λ of the λ-returns (Dreamer: 0.95); 0 is one-step TD, 1 Monte-Carlo
            returns bootstrapped only at the rollout's end.
        horizon: T, model steps per imagined rollout (Dreamer: 15).
        batch: start beliefs per update; `update` draws this many rows at random (with its
            `generator`) when given more.
        lr: Adam learning rate.
        adam_eps: Adam epsilon.
        hidden: units of the critic's hidden layers (ELU activations).
        tau: target network update rate: every `target_period` updates the target's parameters
            move by `tau` towards the online critic's (1.0 with a period of 100 is Dreamer
            V2's hard copy every 100 updates; 0.01 every update is a Polyak average).
        target_period: updates between target network updates.
        grad_clip: gradient-norm clip of the critic's update.
        normalize: PopArt target normalisation (the critic learns standardised returns); off,
            it regresses raw returns.
        norm_rate: rate of the exponential moving averages of the targets' mean and second
            moment used by PopArt (the first update sets them from its batch).
        replan_every: with a planner as behaviour, plan again after following this many of
            the plan's actions; 0 follows each plan's whole sequence before planning again.

    Raises:
        ValueError: on a discount or λ outside (0, 1] / [0, 1], counts below 1 (0 allowed for
            `replan_every`), non-positive rates, or a `tau` outside (0, 1].
    """

    discount: float = 0.99
    td_lambda: float = 0.95
    horizon: int = 15
    batch: int = 256
    lr: float = 3e-4
    adam_eps: float = 1e-5
    hidden: tuple[int, ...] = (200, 200)
    tau: float = 0.01
    target_period: int = 1
    grad_clip: float = 100.0
    normalize: bool = True
    norm_rate: float = 0.01
    replan_every: int = 0

    def __post_init__(self) -> None:
        check_range(self, "discount", 0.0, 1.0, low_open=True)
        check_range(self, "td_lambda", 0.0, 1.0)
        check_int(self, "horizon", "batch", "target_period", minimum=1)
        check_int(self, "replan_every", minimum=0)
        check_range(self, "tau", 0.0, 1.0, low_open=True)
        check_positive(self, "lr", "adam_eps", "grad_clip")
        check_range(self, "norm_rate", 0.0, 1.0, low_open=True)
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"ValueConfig.hidden must be a non-empty tuple of positive sizes; got {self.hidden}")


class ValueFunction(nn.Module):
    """A critic on latent beliefs: `V(state [N]) -> [N]`, an MLP on `state.features()` `[N, D + S]`.

    `V = loc + scale * f(features)`: the network f predicts standardised values and the buffers
    `loc`, `scale` (PopArt's μ, σ; 0 and 1 until a `ValueLearner` with `normalize=True` sets
    them) map them back to return units. Usable as `Objective(value=...)`; differentiable in the
    features, so gradient planners can use it too.

    Args:
        feature_dim: D + S, the model's latent feature size (RSSM: deter + stoch = 230).
        hidden: hidden layer sizes (ELU activations).
        seed: seed of the weight initialisation (drawn in a forked RNG: the global one is left
            as it was).

    Raises:
        ValueError: (when called) if the input is not `[N, feature_dim]` features or a
            `LatentState` of that size.

    Source: the critic of Dreamer (Hafner et al. 2020), on PlaNet's latent features.
    """

    differentiable = True

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (200, 200), *, seed: int = 0) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"ValueFunction: feature_dim must be >= 1; got {feature_dim}")
        self.feature_dim = int(feature_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            width = self.feature_dim
            for h in hidden:
                layers += [nn.Linear(width, int(h)), nn.ELU()]
                width = int(h)
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(width, 1)
        self.register_buffer("loc", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def _features(self, state: LatentState | Tensor) -> Tensor:
        x = state.features() if isinstance(state, LatentState) else state
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(
                f"ValueFunction: expected a LatentState or features [N, {self.feature_dim}]; "
                f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        return x

    def normalized(self, state: LatentState | Tensor) -> Tensor:
        """`[N]` the network's standardised prediction f (before `loc + scale * f`)."""
        return self.head(self.body(self._features(state))).squeeze(-1)

    def forward(self, state: LatentState | Tensor) -> Tensor:
        """`[N]` the value of every belief (or feature row), in return units."""
        return self.loc + self.scale * self.normalized(state)


@dataclass(frozen=True)
class ImaginedRollout:
    """A batch of imagined trajectories under a behaviour, detached from every graph.

    Attributes:
        features: `[T + 1, N, F]` latent features of the beliefs s_0 .. s_T.
        rewards: `[T, N]` rewards r_1 .. r_T from the objective (r_{t+1} for the step from s_t).
        actions: `[T, N, A]` the behaviour's actions.
        planner_evals: imagined transitions spent by a planner behaviour to choose the actions
            (0 for a policy); the rollout itself is `T * N` more.
        continues: `[T, N]` the objective's continuation c_t of the step from s_t (the
            probability that the episode goes on after it; `Objective(continuation=...)`), or
            `None`: every step continues (c_t = 1).
    """

    features: Tensor
    rewards: Tensor
    actions: Tensor
    planner_evals: int = 0
    continues: Tensor | None = None

    def __post_init__(self) -> None:
        if self.continues is not None and self.continues.shape != self.rewards.shape:
            raise ValueError(
                f"ImaginedRollout: continues must be [T, N] like rewards {tuple(self.rewards.shape)}; "
                f"got {tuple(self.continues.shape)}"
            )

    @property
    def horizon(self) -> int:
        """T, steps per trajectory."""
        return self.rewards.shape[0]

    @property
    def batch(self) -> int:
        """N, trajectories."""
        return self.rewards.shape[1]

    def index(self, idx: Tensor) -> "ImaginedRollout":
        """The trajectories `idx` (an index tensor or mask over N)."""
        return ImaginedRollout(self.features[:, idx], self.rewards[:, idx], self.actions[:, idx], 0,
                               None if self.continues is None else self.continues[:, idx])

    @staticmethod
    def cat(rollouts: Sequence["ImaginedRollout"]) -> "ImaginedRollout":
        """Concatenate rollouts of equal horizon along N (a rollout without `continues` counts as all ones)."""
        cont = None
        if any(r.continues is not None for r in rollouts):
            cont = torch.cat(
                [r.continues if r.continues is not None else torch.ones_like(r.rewards) for r in rollouts], 1
            )
        return ImaginedRollout(
            torch.cat([r.features for r in rollouts], 1), torch.cat([r.rewards for r in rollouts], 1),
            torch.cat([r.actions for r in rollouts], 1), sum(r.planner_evals for r in rollouts), cont,
        )

    def weights(self) -> Tensor:
        """`[T, N]` the probability of reaching s_t: prod_{k<t} c_k (1 at t = 0; all ones without
        `continues`). Dreamer weighs the critic's loss at s_t by it (Hafner et al. 2021, DreamerV2, Eq. 6)."""
        if self.continues is None:
            return torch.ones_like(self.rewards)
        c = self.continues
        return torch.cumprod(torch.cat([torch.ones_like(c[:1]), c[:-1]], 0), 0)


def lambda_returns(
    rewards: Tensor, values: Tensor, discount: float, td_lambda: float, continues: Tensor | None = None
) -> Tensor:
    """λ-returns of trajectories, computed backwards.

    `G_T = V(s_T)`, `G_t = r_{t+1} + γ c_t ((1 - λ) V(s_{t+1}) + λ G_{t+1})`: the exponentially
    weighted average, with weights (1 - λ) λ^(n-1), of the n-step returns bootstrapped with V,
    the rest of the weight on the return bootstrapped at T (Sutton & Barto 2018, Eq. 12.3;
    Dreamer's V_λ, Hafner et al. 2020, Eq. 6), with Dreamer's continuation c_t (DreamerV2:
    the predicted discount γ c_t in place of γ). c_t = 0 ends the episode after the step from
    s_t: G_t is that step's reward alone (the reward into the terminal state counts; what
    follows does not, NaN included).

    Args:
        rewards: `[T, N]` with `rewards[t]` the reward of the step from s_t to s_{t+1}.
        values: `[T + 1, N]` bootstrap values V(s_0) .. V(s_T) (V(s_0) is not used).
        discount: γ.
        td_lambda: λ in [0, 1].
        continues: optional `[T, N]` c_t in [0, 1], the probability that the episode continues
            after the step from s_t (`ImaginedRollout.continues`); `None`: all ones.

    Returns:
        `[T, N]` the λ-return G_t of every s_t, t < T.

    Raises:
        ValueError: if the shapes disagree, `discount` is not in [0, 1], `td_lambda` not in
            [0, 1], or a continuation lies outside [0, 1] (a NaN one is passed on, as the
            objective's check passes it: its trajectory's targets become NaN).
    """
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"lambda_returns: discount must be in [0, 1]; got {discount}")
    if not 0.0 <= td_lambda <= 1.0:
        raise ValueError(f"lambda_returns: td_lambda must be in [0, 1]; got {td_lambda}")
    if rewards.dim() != 2 or values.shape != (rewards.shape[0] + 1, rewards.shape[1]):
        raise ValueError(
            f"lambda_returns: rewards must be [T, N] and values [T + 1, N]; "
            f"got {tuple(rewards.shape)} and {tuple(values.shape)}"
        )
    if continues is not None and continues.shape != rewards.shape:
        raise ValueError(
            f"lambda_returns: continues must be [T, N] like rewards {tuple(rewards.shape)}; got {tuple(continues.shape)}"
        )
    if continues is not None and bool(((continues < 0) | (continues > 1)).any()):
        raise ValueError("lambda_returns: continues must lie in [0, 1]")
    out = torch.empty_like(rewards)
    g = values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        ahead = (1.0 - td_lambda) * values[t + 1] + td_lambda * g
        if continues is None:
            g = rewards[t] + discount * ahead
        else:
            g = rewards[t] + discounted(ahead, discount * continues[t].to(rewards.dtype))
        out[t] = g
    return out


class ValueLearner:
    """Trains a `ValueFunction` by TD(λ) on rollouts imagined under a behaviour.

    One `update(model, start, behaviour)`:

    1. draws `config.batch` of the `start` beliefs (all of them if fewer), detached;
    2. imagines `config.horizon` steps from them under `behaviour`: a `Policy`
       (`behaviour.act(state, generator=)` every step), or a `Planner` whose plan, made from the
       current imagined beliefs, is followed for its whole action sequence (or
       `config.replan_every` steps) before planning again; an object with both `act` and
       `plan` is used as a policy. Rewards come from `objective` (`Objective(model)`, the
       learned reward, by default); the planner plans with the same objective, and its
       continuation (`Objective(continuation=...)`), if any, gives c_t of every step;
    3. computes λ-returns with the target network's values (`lambda_returns`; with a
       continuation, γ c_t in place of γ, as Dreamer);
    4. takes one Adam step on ½ (f(s_t) - (G_t - μ) / σ)² averaged over the rollout's beliefs
       s_0 .. s_{T-1} (PopArt's μ, σ; without normalisation f is V and μ = 0, σ = 1); with a
       continuation the average is weighted by w_t = prod_{k<t} c_k, the probability of
       reaching s_t (Dreamer), so beliefs past an episode's end do not count (PopArt's moments
       are weighted alike);
    5. moves the target network towards the critic every `target_period` updates.

    Trajectories whose rewards, target values or beliefs are NaN/inf (where w_t > 0) are left
    out of the loss (counted as `nonfinite`).

    Args:
        config: `ValueConfig` (defaults if `None`).
        feature_dim: D + S of the world model's beliefs.
        device: where the critic lives (beliefs are moved there).
        seed: initialisation seed of the critic.

    Attributes:
        value: the online critic (`ValueFunction`), usable as `Objective(value=learner.value)`.
        target: the slow target critic.
        updates: updates taken so far.

    Raises (from `update`/`imagine`):
        TypeError: `behaviour` has neither `act` nor `plan`.
        ValueError: `start` has the wrong feature size or no rows, a rollout horizon below 1,
            or the behaviour returns actions of the wrong shape. From `load_state_dict`: a
            state learnt for another discount γ or another critic architecture.

    Source: Dreamer's critic training (Hafner et al. 2020, Sec. 3 and Eq. 6-8), TD(λ) (Sutton
    1988), target networks (Mnih et al. 2015), PopArt (van Hasselt et al. 2016).
    """

    def __init__(
        self, config: ValueConfig | None = None, feature_dim: int = 230, *,
        device: torch.device | str = "cpu", seed: int = 0,
    ) -> None:
        self.config = config or ValueConfig()
        self.device = torch.device(device)
        self.value = ValueFunction(feature_dim, self.config.hidden, seed=seed).to(self.device)
        self.target = copy.deepcopy(self.value).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.value.parameters(), lr=self.config.lr, eps=self.config.adam_eps)
        self.updates = 0
        self._stats_ready = False

    def __repr__(self) -> str:
        return f"ValueLearner({self.config}, feature_dim={self.value.feature_dim}, updates={self.updates})"

    # ------------------------------------------------------------------ imagination
    @torch.no_grad()
    def imagine(
        self,
        model: WorldModel,
        start: LatentState,
        behaviour: Policy | Planner,
        *,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
        horizon: int | None = None,
    ) -> ImaginedRollout:
        """Roll `behaviour` out in `model` for `horizon` (default `config.horizon`) steps from
        every belief of `start` (`[N]` rows, detached). Returns an `ImaginedRollout` with
        `features [T + 1, N, F]`, `rewards [T, N]`, `actions [T, N, A]`, and `continues [T, N]`
        when the objective has a continuation (`Objective.transition`; else None). The rollout
        runs all T steps past an episode's end (the batch stays rectangular); `learn` gives those
        steps no weight.

        Raises:
            TypeError: `behaviour` has neither `act` nor `plan`.
            ValueError: `horizon` is not an int >= 1; `start` has no rows; the behaviour's
                actions are not `[N, A]`."""
        objective = objective or Objective(model)
        if horizon is None:
            horizon = self.config.horizon
        if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
            raise ValueError(f"ValueLearner.imagine: horizon must be an int >= 1; got {horizon!r}")
        horizon = int(horizon)
        if start.batch < 1:
            raise ValueError("ValueLearner.imagine: start has no beliefs (B = 0)")
        use_policy = callable(getattr(behaviour, "act", None))
        if not use_policy and not callable(getattr(behaviour, "plan", None)):
            raise TypeError(f"ValueLearner: behaviour must be a Policy (act) or a Planner (plan); got {behaviour!r}")
        state = start.detach()
        n, a = state.batch, model.action_dim
        low, high = model.action_low.to(state.device), model.action_high.to(state.device)
        feats, rewards, actions, conts = [state.features()], [], [], []
        plan_actions, j, planner_evals = None, 0, 0
        period = self.config.replan_every
        for _ in range(horizon):
            if use_policy:
                act = behaviour.act(state, generator=generator)
            else:
                if plan_actions is None or j >= plan_actions.shape[1] or (period and j >= period):
                    p = behaviour.plan(objective, state, generator=generator)
                    plan_actions, j = p.actions, 0
                    planner_evals += int(p.info.get("model_evals", 0))
                act = plan_actions[:, j]
                j += 1
            if not isinstance(act, Tensor) or act.shape != (n, a):
                raise ValueError(f"ValueLearner: the behaviour's actions must be [N={n}, A={a}]; got {getattr(act, 'shape', act)}")
            act = torch.maximum(torch.minimum(act, high), low)
            state, r, cont = objective.transition(state, act, generator=generator)
            feats.append(state.features())
            rewards.append(r)
            actions.append(act)
            conts.append(cont)
        return ImaginedRollout(
            torch.stack(feats).detach(), torch.stack(rewards).detach(), torch.stack(actions).detach(), planner_evals,
            torch.stack(conts).detach() if objective.terminates and conts else None,
        )

    # ------------------------------------------------------------------ learning
    def _popart(self, mean: float, second: float) -> None:
        """Set μ, σ from the moments, rescaling both critics' output layers (PopArt) so that
        their outputs in return units are unchanged."""
        old_mu, old_sigma = float(self.value.loc), float(self.value.scale)
        sigma = math.sqrt(max(second - mean * mean, 1e-8))
        sigma = max(sigma, 1e-3)
        for net in (self.value, self.target):
            with torch.no_grad():
                net.head.weight.mul_(old_sigma / sigma)
                net.head.bias.mul_(old_sigma).add_(old_mu - mean).div_(sigma)
                net.loc.fill_(mean)
                net.scale.fill_(sigma)

    def learn(self, rollout: ImaginedRollout) -> dict[str, float]:
        """One TD(λ) step on `rollout` (steps 3-5 of the class docstring); returns diagnostics:
        `value_loss` (standardised units), `value_mean` (critic on the rollout's beliefs),
        `target_mean`, `target_std` (λ-returns), `reward_mean`, `return_scale` (PopArt's σ),
        `grad_norm`, `nonfinite` (trajectories left out)."""
        c = self.config
        feats = rollout.features.to(self.device)
        rewards = rollout.rewards.to(self.device).float()
        t, n = rewards.shape
        cont = None if rollout.continues is None else rollout.continues.to(self.device).float()
        with torch.no_grad():
            v_targ = self.target(feats.reshape((t + 1) * n, -1)).reshape(t + 1, n)
            targets = lambda_returns(rewards, v_targ, c.discount, c.td_lambda, cont)
            # s_t weighs prod_{k<t} c_k (Dreamer); beliefs past an episode's end weigh 0, whatever their targets
            w = rollout.weights().to(self.device).float()
            reached = w > 0
            targets = torch.where(reached, targets, torch.zeros_like(targets))
            # a trajectory counts if its targets and the beliefs the critic is fitted on are finite where reached
            # (a NaN belief with finite targets, e.g. a model that resets, would turn every weight into NaN)
            feat_ok = torch.isfinite(feats[:-1]).all(-1)
            ok = ((torch.isfinite(targets) & feat_ok) | ~reached).all(0)
            n_bad = int((~ok).sum())
            if c.normalize and bool(ok.any()):
                tv, wv = targets[:, ok], w[:, ok]
                m1, m2 = float((wv * tv).sum() / wv.sum()), float((wv * tv * tv).sum() / wv.sum())
                if self._stats_ready:
                    m1_old = float(self.value.loc)
                    m2_old = float(self.value.scale) ** 2 + m1_old**2
                    m1 = (1 - c.norm_rate) * m1_old + c.norm_rate * m1
                    m2 = (1 - c.norm_rate) * m2_old + c.norm_rate * m2
                self._popart(m1, m2)
                self._stats_ready = True
        info = {"nonfinite": float(n_bad),
                "reward_mean": float((w[:, ok] * rewards[:, ok].nan_to_num(0.0)).sum() / w[:, ok].sum())
                if ok.any() else float("nan")}
        if not bool(ok.any()):
            info.update(value_loss=float("nan"), value_mean=float("nan"), target_mean=float("nan"),
                        target_std=float("nan"), return_scale=float(self.value.scale), grad_norm=0.0)
            return info
        f = feats[:-1][:, ok]
        goal = ((targets[:, ok] - self.value.loc) / self.value.scale).detach()
        pred = self.value.normalized(f.reshape(-1, f.shape[-1])).reshape(goal.shape)
        wk = w[:, ok]
        loss = 0.5 * (wk * (pred - goal) ** 2).sum() / wk.sum()  # the plain mean when every w is 1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.value.parameters(), c.grad_clip)
        self.optimizer.step()
        self.updates += 1
        if self.updates % c.target_period == 0:
            with torch.no_grad():
                for p_t, p in zip(self.target.parameters(), self.value.parameters()):
                    p_t.lerp_(p, c.tau)
        with torch.no_grad():
            value_mean = float((self.value.loc + self.value.scale * pred).mean())
        kept = targets[:, ok][wk > 0]
        info.update(
            value_loss=float(loss.detach()), value_mean=value_mean, target_mean=float(kept.mean()),
            target_std=float(kept.std()) if kept.numel() > 1 else 0.0,
            return_scale=float(self.value.scale), grad_norm=float(grad_norm),
        )
        return info

    def update(
        self,
        model: WorldModel,
        start: LatentState,
        behaviour: Policy | Planner,
        *,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One TD(λ) update on rollouts imagined from (a random `config.batch` of) the `start`
        beliefs `[N]` under `behaviour`; see the class docstring. Returns `learn`'s diagnostics
        plus `model_evals` (imagined transitions: the rollout's and the planner's)."""
        if start.features().shape[1] != self.value.feature_dim:
            raise ValueError(
                f"ValueLearner.update: beliefs have {start.features().shape[1]} features; the critic "
                f"expects {self.value.feature_dim}"
            )
        start = start.detach()
        if start.batch > self.config.batch:
            idx = torch.randperm(start.batch, generator=generator, device=generator.device if generator is not None else "cpu")
            start = start.index(idx[: self.config.batch].to(start.device))
        rollout = self.imagine(model, start, behaviour, objective=objective, generator=generator)
        info = self.learn(rollout)
        info["model_evals"] = float(rollout.horizon * rollout.batch + rollout.planner_evals)
        return info

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Critic, target critic, optimiser, update count and normalisation flag (for checkpoints)."""
        return {
            "value": self.value.state_dict(), "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(), "updates": self.updates, "stats_ready": self._stats_ready,
            "config": dict(self.config.__dict__),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved (to resume training).

        This learner's own config stays in force: the optimiser keeps this config's `lr` and
        `adam_eps` (torch's `Optimizer.load_state_dict` would bring back the stored ones). Other
        settings (λ, the horizon, the batch) may change between runs: on-policy, TD(λ) has the
        same fixed point for every λ; the discount may not, since the stored critic estimates
        the return for its γ.

        Raises:
            KeyError: if a part is missing.
            ValueError: if the stored config has another `discount`, or the stored critic
                another architecture (hidden sizes or feature size); nothing is loaded then.
        """
        stored = state.get("config") or {}
        if "discount" in stored and float(stored["discount"]) != float(self.config.discount):
            raise ValueError(
                f"ValueLearner.load_state_dict: the stored critic estimates returns with discount {stored['discount']}; "
                f"this learner's is {self.config.discount}"
            )
        want = {k: tuple(v.shape) for k, v in self.value.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state["value"].items()}
        if got != want:
            raise ValueError(
                f"ValueLearner.load_state_dict: the stored critic has parameters {got}; this one has {want} "
                f"(hidden={self.config.hidden}, feature_dim={self.value.feature_dim})"
            )
        self.value.load_state_dict(state["value"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # this config's rates, not the stored ones
            group["lr"], group["eps"] = self.config.lr, self.config.adam_eps
        self.updates = int(state["updates"])
        self._stats_ready = bool(state["stats_ready"])


def posterior_beliefs(
    model: WorldModel,
    episodes: Iterable[Mapping[str, np.ndarray]] | Any,
    *,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> tuple[LatentState, Tensor]:
    """The posterior belief at every step of stored episodes, the start states a critic learns
    from: `latentplan.worldmodels.filter_episodes(model, episodes, generator=, max_batch=)`, with
    every belief kept (also the one after the final observation).

    Returns:
        `(beliefs [R], episode_index [R])`, rows of each episode contiguous, in episode order.

    Raises:
        ValueError: an episode lacks `obs`, `action` or `is_first`.
    """
    return filter_episodes(model, episodes, generator=generator, max_batch=max_batch)
