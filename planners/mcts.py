"""Monte-Carlo tree search (MCTS) in the learned latent space, with a learned value at the leaves.

MuZero's search (Schrittwieser et al. 2020, "Mastering Atari, Go, Chess and Shogi by Planning with
a Learned Model", Appendix B: pUCT with priors, discount, min-max normalised Q values) over the
learned model, with continuous actions handled by sampling K actions per node as in Sampled
MuZero (Hubert et al. 2021, "Learning and Planning in Complex Action Spaces", ICML), a discrete
mode where every node's children are a given action set (with priors and invalid-action masks),
and at the root Gumbel MuZero's selection by sequential halving (Danihelka et al. 2022, "Policy
improvement by planning with Gumbel", ICLR).

Implementation: the tree's bookkeeping is numpy arrays `[B, nodes]` walked by small
numba-compiled kernels (`mcts_tree.py`), and the model runs in torch, once per simulation for the
K children of every environment's leaf (`B * K` rows in one batched call). On a GPU the model and
the stored beliefs stay on the device and only the `[B, K]` rewards and values travel to the host,
once per simulation (`benchmarks/mcts_speed.py`; docs/benchmarks.md).

Why this module is longer than 500 lines: it is one planner, its config and its plan's completion,
and about 170 of its lines are those two documented interfaces; the tree's kernels, its reuse and
the root's statistics already live in `mcts_tree.py`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from . import mcts_tree as kt
from .base import Plan, Policy
from .objective import Objective, discounted
from .validate import check_choice, check_int, check_plan_inputs, check_positive

__all__ = ["MCTS", "MCTSConfig"]


@dataclass(frozen=True)
class MCTSConfig:
    """Settings of `MCTS`.

    Attributes:
        simulations: S, simulations per plan call (each expands one leaf per environment: K
            model evaluations). At least one always runs, even past a deadline.
        children: K, actions sampled at every expanded node (Sampled MuZero's K). Ignored in
            the discrete mode, where K is the size of the action set.
        horizon: H, the deepest tree level, in model steps from the root (the root is level 0);
            nodes at this depth are leaves whose value is the objective's bootstrap. Also the
            horizon of the returned `Plan`.
        c1: pUCT exploration constant c1 (MuZero: 1.25; here 2.5, measured on the trap family,
            docs/planners.md).
        c2: pUCT exploration constant c2 (MuZero: 19652): the bonus grows as
            `c1 + log((N + c2 + 1) / c2)` with the parent's visits N.
        proposal_std: without a proposal policy, the standard deviation, in action units, of the
            Gaussian proposal around the warm start's action at the node's depth (or zero).
        include_mean: make child 0 of every node the proposal's mean: the warm-start action at
            that depth (zero without one), or the policy's deterministic action. The other
            K - 1 children are samples.
        backup: how a node's value U is formed from the returns backed up through it: `"max"`
            (a Bellman backup over the tree: U = max_k (r_k + gamma U_k) over its children, the
            bootstrap value at unexpanded nodes; exact as soon as the optimal path is in the tree
            of a deterministic model) or `"mean"` (MuZero: the average W / N, less optimistic
            under noisy values, slow to find a delayed reward).
        root: `"gumbel"` (Gumbel MuZero: m root actions chosen by Gumbel-top-m on the prior logits
            plus the normalised Q, then sequential halving over the simulations; the plan's first
            action is the survivor with the best score) or `"puct"` (MuZero: pUCT at the root too,
            and the most visited root action is played).
        considered: m, the root actions considered by the Gumbel root (at most K).
        c_visit, c_scale: Gumbel MuZero's monotone transform of the normalised Q,
            sigma(q) = (c_visit + max_b N(b)) * c_scale * q (paper: 50 and 0.1).
        gumbel_scale: the scale of the Gumbel noise at the root. 0 (default) makes the root's choice
            deterministic, the best prior logit + sigma(q) among the survivors, which is what a
            planner that acts should return (mctx's `gumbel_scale` for evaluation); 1 is the paper's
            sampling, for exploration when the search generates training data.
        leaf: how a new node at depth d < H is valued: `"rollout"` (classic MCTS, Kocsis &
            Szepesvari 2006; Coulom 2006): the default policy's return from it to the horizon plus
            gamma^(H - d) times the objective's bootstrap there, the same completion the plan gets,
            so a node's value estimates the objective's H-step return. Two default policies run
            and the better counts (the value of the best known completion): the last action
            repeated, and the proposal's mean (the policy's action, the warm start's, zero, or the
            highest-prior discrete action); costs 2 (H - d) model evaluations per child. `"value"` (MuZero): the bootstrap V + T of the node itself, one
            evaluation per child, right when V is a trained critic of the task.
        evals: optional budget of model evaluations per environment and call: the search stops
            once a simulation has spent it less a reserve of `2 * horizon` for the plan's completion (at
            least one simulation runs), so `info["model_evals"] <= B * evals` unless one simulation
            alone costs more. `None`: `simulations` alone bounds the search.
        reuse: keep the subtree below the executed action for the next call, when that call's
            warm start is this plan shifted (`Plan.shift`), the new belief equals the one the
            tree predicted (within `reuse_tol`) and the objective is the same (discount, the same
            reward functions, equal context values); otherwise the tree starts afresh. Kept nodes
            keep their values (their rollouts one step short of the new horizon) until revisited.
        reuse_tol: the largest absolute difference, per belief entry, between the new belief and
            the tree's prediction for the subtree to be reused.

    Raises:
        ValueError: on `simulations`, `children`, `horizon` or `considered` below 1, a
            non-positive (or non-finite) `c1`, `c2`, `proposal_std`, `c_visit`, `c_scale` or
            `reuse_tol`, or an unknown `backup` or `root` (the message names the field).
    """

    simulations: int = 100
    children: int = 8
    horizon: int = 5
    c1: float = 2.5
    c2: float = 19652.0
    proposal_std: float = 1.0
    include_mean: bool = True
    backup: Literal["mean", "max"] = "max"
    root: Literal["gumbel", "puct"] = "gumbel"
    considered: int = 16
    c_visit: float = 50.0
    c_scale: float = 0.1
    gumbel_scale: float = 0.0
    leaf: Literal["rollout", "value"] = "rollout"
    evals: int | None = None
    reuse: bool = True
    reuse_tol: float = 1e-5

    def __post_init__(self) -> None:
        check_choice(self, "backup", ("mean", "max"))
        check_choice(self, "root", ("gumbel", "puct"))
        check_choice(self, "leaf", ("rollout", "value"))
        check_int(self, "simulations", "children", "horizon", "considered", minimum=1)
        check_int(self, "evals", minimum=1, optional=True)
        check_positive(self, "c1", "c2", "proposal_std", "c_visit", "c_scale", "reuse_tol")
        if not (math.isfinite(self.gumbel_scale) and self.gumbel_scale >= 0):
            raise ValueError(f"MCTSConfig: gumbel_scale must be finite and >= 0; got {self.gumbel_scale}")

    @property
    def model_evals(self) -> int:
        """Imagined transitions per decision and environment at most: `evals` when set; otherwise per
        simulation `children` (leaf="value") or `2 * children * horizon` (leaf="rollout", a bound: a child at
        depth d runs two rollouts of H - d steps), plus `2 * horizon` to complete the plan past the tree."""
        if self.evals is not None:
            return self.evals
        per = self.children * (2 * self.horizon if self.leaf == "rollout" else 1)
        return self.simulations * per + 2 * self.horizon


class MCTS:
    """Sampled MuZero-style tree search over a world model, batched over B environments.

    One plan call runs `simulations` simulations; each, for every environment at once:

    1. **Selection**: at the root, with `root="gumbel"`, the action sequential halving asks for
       (below); elsewhere (and at the root with `root="puct"`) pUCT (MuZero),
       `argmax_k Qn(k) + P(k) sqrt(N) / (1 + N_k) (c1 + log((N + c2 + 1) / c2))`, where N is
       the parent's visits, N_k the child's, P(k) its prior and Qn(k) its Q value min-max
       normalised over all Q values seen in this environment's tree. Q(k) = r_k + gamma U_k,
       with U_k the child's value: the lookahead V(s_k) until a simulation has been backed up
       through it (every child is evaluated when it is created), then its best child's
       r + gamma U (`backup="max"`) or W_k / N_k (`"mean"`). Edges with a non-finite reward or
       value, or an invalid action, rank last and are never selected.
    2. **Expansion**: if the node is above the depth limit, propose K actions at it and
       evaluate all K children in one batched model call over all environments
       (`objective.step` on `B * K` rows: next belief and reward, the objective's reward terms
       with their per-step discount) and one value call (`objective.bootstrap`: the value and
       terminal terms V + T, zero without either).
    3. **Backup**: the expanded node's value is the best lookahead max_k (r_k + gamma V(s_k));
       a node at the depth limit keeps V. It is backed up the path, `G <- r + gamma G`.

    **Gumbel root** (Danihelka et al. 2022): once the root is expanded, Gumbel noise g_k is drawn
    for its K children; the score of child k is `g_k + logit_k + sigma(q_k)`, with logit the log
    prior and q the root's Q min-max normalised over its children. Sequential halving
    (`mcts_tree.halving_schedule`) spends the simulations on m = min(considered, valid K)
    children in ceil(log2 m) phases, halving them by score; the plan starts with the survivor with
    the best score. Every child's Q is known from the expansion, so the "completed" Q of an
    unvisited child is its one-step lookahead.

    Proposals and priors (the children of a node):

    - `proposal` given (any `Policy`, e.g. a distilled one): K samples of `proposal.act` at the
      node (child 0 its deterministic action when `include_mean`); priors uniform (below).
    - discrete `actions [M, A]` given: all M actions at every node (K = M). Priors: with a
      `proposal` that has `log_prob(state [N], actions [N, M, A]) -> [N, M]` (as `GaussianPolicy`),
      the softmax of those log-probabilities over the valid actions; otherwise uniform over them.
      `mask(state [N]) -> bool [N, M]` (True = valid) removes invalid actions at every node; a
      root belief where it allows no action is a `ValueError` at plan time (below the root, a
      node without a valid action is never expanded further: its edges are not selected).
    - otherwise a Gaussian with std `proposal_std` around the warm start's action at the node's
      depth (around zero without a warm start or past its end); child 0 is the mean itself when
      `include_mean`.

    For sampled children the priors are uniform, 1/K: with the children drawn from the proposal
    itself, Sampled MuZero's prior (β̂/β)·π with β = π reduces to the empirical distribution β̂ of
    the samples (Hubert et al. 2021, Sec. 4). All proposals are clipped into the model's bounds.
    The model's stochastic transition is sampled once per edge: a child's belief and reward are
    fixed once created.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan`:

    - `actions [B, H, A]` with H = `horizon`: the chosen root action, then the tree's path below
      it (best Q with `backup="max"`, most visits with `"mean"`); past the expanded part of that
      path the plan is completed through the model from the path's last belief with the
      proposal's mean: the warm start's action at that depth (zero past its end), the policy's
      deterministic action, or the highest-prior valid discrete action.
    - `value [B]`: the objective's return of that sequence, `sum_t gamma^t r_t + gamma^H (V + T)`
      (the path's rewards as the tree evaluated them, then the completion's); for a deterministic
      model it equals `objective.returns(state, plan.actions)` to float rounding; `-inf` where
      that return is NaN/inf (as every planner reports a non-finite return).
    - `info`: `root_actions [B, K, A]`, `root_visits [B, K]` (int64), `root_policy [B, K]` (the
      distillation target: with the Gumbel root the improved policy softmax(logit + sigma(q)) of
      Gumbel MuZero, with pUCT the visits normalised, one-hot on the chosen action if none),
      `root_q [B, K]`, `root_value [B]` (Q of the chosen root action in the tree), `simulations`
      (= `iterations`), `model_evals` (imagined transitions, summed over environments, the
      completion included), `nonfinite`, `max_depth`, `reused` (environments whose subtree was
      kept), `mcts_tree` (the tree, for reuse by the next call), `plan_ms`.

    Anytime: `deadline` (absolute `time.perf_counter()`) is checked after every simulation;
    the first simulation always runs.

    Args:
        config: `MCTSConfig`; keyword `overrides` replace fields.
        proposal: optional `Policy` whose samples are a node's children (continuous), or whose
            log-probabilities are the priors over `actions` (discrete).
        actions: optional `[M, A]` discrete action set (M >= 1), used instead of sampling.
        mask: optional `(state [N]) -> bool [N, M]` valid-action mask for the discrete mode.

    Raises:
        ValueError: `actions` not 2-D or containing NaN/inf, `mask` without `actions` (here);
            at plan time: `actions` of the wrong dimension or outside the model's bounds, a
            warm start that is not `[B, H', A]` or holds NaN/inf, a proposal or mask returning a
            wrong shape, a mask that allows no action at a root belief, and the shared input
            checks of `Planner.plan` (`validate.check_plan_inputs`).
        TypeError: `proposal` without an `act` method, `mask` not callable (here); a mask
            returning a non-bool tensor (at plan time).

    Source: Schrittwieser et al. 2020 (MuZero), Appendix B; Hubert et al. 2021 (Sampled
    MuZero); Danihelka et al. 2022 (Gumbel MuZero); Silver et al. 2017 (AlphaGo Zero) for pUCT
    with priors and the reuse of the subtree below the played move.
    """

    def __init__(
        self,
        config: MCTSConfig | None = None,
        *,
        proposal: Policy | None = None,
        actions: Tensor | None = None,
        mask: Callable[[LatentState], Tensor] | None = None,
        **overrides,
    ) -> None:
        self.config = dataclasses.replace(config or MCTSConfig(), **overrides)
        if proposal is not None and not callable(getattr(proposal, "act", None)):
            raise TypeError(f"MCTS: proposal must have an act(state, *, generator, deterministic) method; got {proposal!r}")
        if actions is not None:
            actions = torch.as_tensor(actions, dtype=torch.float32)
            if actions.dim() != 2 or actions.shape[0] < 1:
                raise ValueError(f"MCTS: actions must be [M, A] with M >= 1; got {tuple(actions.shape)}")
            if not torch.isfinite(actions).all():
                raise ValueError("MCTS: actions contain NaN or inf")
        if mask is not None and actions is None:
            raise ValueError("MCTS: mask= needs the discrete action set actions=[M, A]")
        if mask is not None and not callable(mask):
            raise TypeError(f"MCTS: mask must be a callable state -> bool [N, M]; got {mask!r:.80}")
        self.proposal = proposal
        self.actions = actions
        self.mask = mask
        self._schedules: dict[tuple[int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        mode = "discrete" if self.actions is not None else ("policy" if self.proposal is not None else "gaussian")
        return f"MCTS({self.config}, proposal={mode})"

    @property
    def children(self) -> int:
        """K, the children of every expanded node (the action set's size in the discrete mode)."""
        return self.actions.shape[0] if self.actions is not None else self.config.children

    # ------------------------------------------------------------------ proposals and priors
    def _discrete_priors(self, leaf: LatentState) -> tuple[Tensor, Tensor]:
        """`(prior [n, M], valid bool [n, M])` over the action set at the beliefs `leaf [n]`."""
        n, m = leaf.batch, self.children
        acts = self.actions.to(leaf.device, leaf.deter.dtype)
        valid = torch.ones(n, m, dtype=torch.bool, device=leaf.device)
        if self.mask is not None:
            valid = self.mask(leaf)
            if not isinstance(valid, Tensor) or valid.shape != (n, m):
                raise ValueError(f"MCTS: mask must return bool [N={n}, M={m}]; got {getattr(valid, 'shape', valid)}")
            if valid.dtype != torch.bool:
                if valid.is_floating_point() or valid.is_complex():
                    raise TypeError(f"MCTS: mask must return bool [N={n}, M={m}] (True = valid) or integers 0/1; got "
                                    f"dtype {str(valid.dtype).replace('torch.', '')} (compare, e.g. mask > 0.5)")
                valid = valid != 0  # an integer 0/1 mask (uint8 included), as accepted before
            valid = valid.to(device=leaf.device)
        logits = torch.zeros(n, m, device=leaf.device, dtype=leaf.deter.dtype)
        if self.proposal is not None and callable(getattr(self.proposal, "log_prob", None)):
            logits = self.proposal.log_prob(leaf, acts[None].expand(n, m, acts.shape[1])).to(logits.dtype)
            if logits.shape != (n, m):
                raise ValueError(f"MCTS: proposal.log_prob must return [N={n}, M={m}]; got {tuple(logits.shape)}")
        logits = logits.masked_fill(~valid, float("-inf"))
        prior = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a row with no valid action: all 0
        return prior, valid

    def _propose(
        self, leaf: LatentState, depth: np.ndarray, warm: Tensor | None, low: Tensor, high: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`(actions [n, K, A], prior [n, K], valid [n, K])` for the leaves `leaf [n]` at depths `depth [n]`."""
        c = self.config
        n, k, dev, dt = leaf.batch, self.children, leaf.device, leaf.deter.dtype
        a = low.shape[0]
        if self.actions is not None:
            prior, valid = self._discrete_priors(leaf)
            return self.actions.to(dev, dt)[None].expand(n, k, a), prior, valid
        if self.proposal is not None:
            sampled = self.proposal.act(leaf.expand(k), generator=generator, deterministic=False)
            if not isinstance(sampled, Tensor) or sampled.shape != (n * k, a):
                raise ValueError(f"MCTS: proposal.act must return [N={n * k}, A={a}]; got {getattr(sampled, 'shape', sampled)}")
            out = sampled.reshape(n, k, a).to(dt)
            if c.include_mean:
                mode = self.proposal.act(leaf, generator=generator, deterministic=True)
                if not isinstance(mode, Tensor) or mode.shape != (n, a):
                    raise ValueError(f"MCTS: proposal.act must return [N={n}, A={a}]; got {getattr(mode, 'shape', mode)}")
                out = torch.cat([mode[:, None].to(dt), out[:, 1:]], dim=1)
        else:
            noise = torch.randn(n, k, a, generator=generator, device=dev, dtype=dt)
            if c.include_mean:
                noise[:, 0] = 0.0
            out = noise.mul_(c.proposal_std)
            if warm is not None:
                out = out.add_(self._warm_at(warm, torch.as_tensor(depth, device=dev))[:, None])
        uniform = torch.full((n, k), 1.0 / k, device=dev, dtype=dt)
        return torch.clamp(out, low, high), uniform, torch.ones(n, k, dtype=torch.bool, device=dev)

    @staticmethod
    def _warm_at(warm: Tensor, depth: Tensor) -> Tensor:
        """`[n, A]` the warm start's action at each row's depth, zero past its end."""
        ok = depth < warm.shape[1]
        return warm[torch.arange(warm.shape[0], device=warm.device), depth.clamp_max(warm.shape[1] - 1)] * ok[:, None]

    # ------------------------------------------------------------------ the tree
    def _start_tree(self, state: LatentState, warm_start: Plan | None, a: int, key) -> tuple[kt.Tree, int]:
        """A fresh tree, or the subtree below the executed action of the warm start's tree (`mcts_tree.start_tree`)."""
        old = None if warm_start is None or not self.config.reuse else warm_start.info.get("mcts_tree")
        return kt.start_tree(old, state, self.children, self.config.horizon, self.config.simulations, a,
                             self.config.reuse_tol, key)

    def _schedule(self, considered: int) -> np.ndarray:
        """Sequential halving's visit targets over the simulations expected to run: `simulations`, or
        fewer under an `evals` budget (a child's two rollouts cost about H + 1 steps on average)."""
        c = self.config
        sims = c.simulations
        if c.evals is not None:
            per = self.children * (c.horizon + 1 if c.leaf == "rollout" else 1)
            sims = max(1, min(sims, c.evals // per))
        key = (considered, sims)
        if key not in self._schedules:
            self._schedules[key] = kt.halving_schedule(considered, sims)
        return self._schedules[key]

    def _pick_target(self, considered: int, step: int) -> int:
        """The visit count the root child picked at root step `step` must have; past the schedule's end,
        the survivors' count keeps growing by one per round over the last two."""
        sched = self._schedule(max(considered, 1))
        if step < len(sched):
            return int(sched[step])
        over = step - len(sched)
        return int(sched[-1]) + 1 + over // min(2, max(considered, 1))

    def _root_logits(self, tree: kt.Tree, generator: torch.Generator | None, dev) -> tuple[np.ndarray, np.ndarray]:
        """`(g + log prior [B, K], m [B])`: the Gumbel root's perturbed logits (-inf for invalid or
        non-finite children) and the number of root actions it considers."""
        b, k = tree.first_child.shape[0], self.children
        fc = tree.first_child[:, :1] + np.arange(k)
        rows = np.arange(b)[:, None]
        prior = tree.prior[rows, fc]
        q = kt.edge_q(tree.reward[rows, fc], tree.disc[rows, fc], tree.node_value[rows, fc])
        finite = np.isfinite(q) & (prior > 0)
        u = torch.rand(b, k, generator=generator, device=dev, dtype=torch.float64).cpu().numpy()
        g = -np.log(-np.log(np.clip(u, 1e-300, 1.0 - 1e-16))) * self.config.gumbel_scale
        with np.errstate(divide="ignore"):
            logits = np.where(finite, g + np.log(np.where(finite, prior, 1.0)), -np.inf)
        m = np.minimum(self.config.considered, finite.sum(1)).astype(np.int64)
        return logits, m

    # ------------------------------------------------------------------ plan
    @torch.no_grad()
    def plan(
        self,
        objective: Objective,
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """Search from every belief in `state` (`[B]` rows); see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H', A]` (any H'); `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                discrete `actions` of the wrong A or outside the bounds; a `mask` that
                allows no action at a root belief, or returns a wrong shape (ValueError) or a
                float tensor (TypeError); a proposal returning a wrong shape.
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("MCTS.plan", objective, state, warm_start=warm_start, generator=generator, deadline=deadline)
        model = objective.model
        b, a, k = state.batch, objective.action_dim, self.children
        dev, dt = state.device, state.deter.dtype
        low, high = model.action_low.to(dev, dt), model.action_high.to(dev, dt)
        if self.actions is not None:
            if self.actions.shape[1] != a:
                raise ValueError(f"MCTS: actions must be [M, A={a}]; got {tuple(self.actions.shape)}")
            acts = self.actions.to(dev, dt)
            if bool((acts < low).any() or (acts > high).any()):
                raise ValueError("MCTS: the discrete actions lie outside the model's action bounds")
            if self.mask is not None:  # once per call, at the roots: a belief with no valid action has no plan
                _, valid = self._discrete_priors(state)
                empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
                if empty:
                    raise ValueError(f"MCTS.plan: mask allows no action at the belief(s) of environment(s) {empty[:8]} "
                                     f"(all {k} actions masked); a plan needs at least one valid action")
        warm = None
        if warm_start is not None:
            wa = warm_start.actions
            if wa.dim() != 3 or wa.shape[0] != b or wa.shape[2] != a:
                raise ValueError(f"MCTS.plan: warm_start.actions must be [B={b}, H', A={a}]; got {tuple(wa.shape)}")
            warm = wa.to(dev, dt)
        key = kt.objective_key(objective) if c.reuse else None
        tree, reused = self._start_tree(state, warm_start, a, key)
        tree.objective_key = key
        gamma, gumbel = float(objective.discount), c.root == "gumbel"
        qmin, qmax = kt.q_bounds(tree)
        leaves, depths = np.zeros(b, np.int64), np.zeros(b, np.int64)
        picks, root_new = np.full(b, -1, np.int64), np.zeros((b, k))
        scores, logits, m = np.zeros((b, k)), None, None
        stats = {"evals": 0, "nonfinite": 0, "levels": 0}
        sims = 0
        for _ in range(c.simulations):
            if gumbel and (tree.first_child[:, 0] >= 0).all():
                if logits is None:
                    logits, m = self._root_logits(tree, generator, dev)
                kt.root_scores(tree.first_child, k, tree.visits, tree.node_value, tree.reward, tree.disc, logits,
                               c.c_visit, c.c_scale, scores)
                step = root_new.sum(1).astype(np.int64)
                target = np.array([self._pick_target(int(mi), int(s)) for mi, s in zip(m, step)], np.int64)
                kt.gumbel_pick(scores, root_new, target, picks)
            kt.descend(tree.first_child, k, tree.visits, tree.node_value, tree.reward, tree.prior, qmin, qmax, tree.disc,
                       c.c1, c.c2, c.horizon, picks, leaves, depths)
            went = (picks >= 0) & (depths > 0)
            root_new[np.nonzero(went)[0], picks[went]] += 1
            self._expand(objective, tree, leaves, depths, warm, low, high, generator, qmin, qmax, gamma, stats)
            sims += 1
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if c.evals is not None and stats["evals"] + self._next_cost(depths, c) > b * (c.evals - 2 * c.horizon):
                break
        if gumbel and logits is None and (tree.first_child[:, 0] >= 0).all():
            logits, m = self._root_logits(tree, generator, dev)
        choice = self._root_choice(tree, gamma, logits, root_new, scores)
        info = {"simulations": sims, "iterations": sims, "nonfinite": stats["nonfinite"], "max_depth": stats["levels"],
                "reused": reused}
        return self._result(objective, state, tree, choice, warm, low, high, gamma, generator, stats, info, t0)

    def _next_cost(self, depths: np.ndarray, c: MCTSConfig) -> int:
        """The most model evaluations one simulation can cost over all environments: K children, each
        rolled out twice to the horizon (at most H steps each from depth 0) with leaf="rollout"."""
        return depths.shape[0] * self.children * (2 * c.horizon if c.leaf == "rollout" else 1)

    def _expand(self, objective, tree, leaves, depths, warm, low, high, generator, qmin, qmax, gamma, stats) -> None:
        """Expand the leaves above the depth limit (one batched model call) and back up every row."""
        b, k, a = tree.first_child.shape[0], self.children, low.shape[0]
        expand = depths < self.config.horizon
        rew, val, dsc = np.zeros((b, k)), np.zeros((b, k)), np.full((b, k), gamma)
        prior, valid = np.zeros((b, k)), np.ones((b, k), dtype=np.bool_)
        if expand.any():
            rows = np.nonzero(expand)[0]
            dev = tree.deter.device
            rows_t = torch.from_numpy(rows).to(dev)
            leaf_t = torch.from_numpy(leaves[rows]).to(dev)
            leaf = LatentState(tree.deter[rows_t, leaf_t], tree.stoch[rows_t, leaf_t])
            prop, pri, ok = self._propose(leaf, depths[rows], None if warm is None else warm[rows_t], low, high, generator)
            n = rows.shape[0]
            env = rows_t.repeat_interleave(k)  # [n * K] the environment of each child row
            with objective.context.rows_of(env):  # a [B, ...] context by environment, not by block
                nxt, r, cont = objective.transition(leaf.expand(k), prop.reshape(n * k, a), generator=generator)
            if self.config.leaf == "rollout":
                child_depth = torch.from_numpy(depths[rows] + 1).to(dev).repeat_interleave(k)
                if objective.terminates:  # a child where the episode ended needs no rollout: its value does not count
                    child_depth = torch.where(cont == 0, self.config.horizon, child_depth)
                w = None if warm is None else warm[rows_t].repeat_interleave(k, dim=0)
                cur = LatentState(nxt.deter.clone(), nxt.stoch.clone())
                v, extra = self._rollout(objective, cur, env, child_depth, prop.reshape(n * k, a), w, low, high,
                                         float(objective.discount), generator)
                stats["evals"] += extra
            else:
                with objective.context.rows_of(env):
                    v = objective.bootstrap(nxt)
            slots = torch.from_numpy(tree.size[rows]).to(dev)[:, None] + torch.arange(k, device=dev)
            tree.deter[rows_t[:, None], slots] = nxt.deter.reshape(n, k, -1)
            tree.stoch[rows_t[:, None], slots] = nxt.stoch.reshape(n, k, -1)
            tree.acts[rows_t[:, None], slots] = prop
            rew[rows] = r.reshape(n, k).double().cpu().numpy()
            val[rows] = v.reshape(n, k).double().cpu().numpy()
            if objective.terminates:  # gamma * c of every new edge; 0 where the episode ends
                dsc[rows] = gamma * cont.reshape(n, k).double().cpu().numpy()
            prior[rows] = pri.double().cpu().numpy()
            valid[rows] = ok.cpu().numpy()
            stats["evals"] += n * k
            stats["levels"] = max(stats["levels"], int(depths[rows].max()) + 1)
        stats["nonfinite"] += kt.expand_backup(leaves, expand, tree.size, rew, val, dsc, prior, valid, *tree.arrays(),
                                               qmin, qmax, self.config.backup == "max")
        tree.size[expand] += k

    def _root_choice(self, tree, gamma, logits, root_new, scores) -> np.ndarray:
        """`[B]` the root child the plan starts with: the Gumbel root's best-scoring survivor (the most
        visited in this call), or -1 for the path kernel's rule (most visits / best Q)."""
        b, k = tree.first_child.shape[0], self.children
        if logits is None:
            return np.full(b, -1, np.int64)
        c = self.config
        kt.root_scores(tree.first_child, k, tree.visits, tree.node_value, tree.reward, tree.disc, logits,
                       c.c_visit, c.c_scale, scores)
        ok = np.isfinite(scores)
        most = np.where(ok, root_new, -1).max(1, keepdims=True)
        best = np.where(ok & (root_new == most), scores, -np.inf)
        return np.where(ok.any(1) & (tree.first_child[:, 0] >= 0), best.argmax(1), -1).astype(np.int64)

    # ------------------------------------------------------------------ the plan
    def _default_action(self, cur: LatentState, t: int, last: Tensor, warm: Tensor | None, repeat: Tensor,
                        low: Tensor, high: Tensor) -> Tensor:
        """`[n, A]` the two default (rollout) policies at the beliefs `cur [n]` at depth t after the actions
        `last [n, A]`: where `repeat [n]`, `last` again (a discrete action only while it is valid); elsewhere
        the proposal's mean: the policy's deterministic action, the warm start's action at depth t (zero
        past its end, or without one), the highest-prior valid discrete action."""
        n, dev, dt = cur.batch, cur.device, cur.deter.dtype
        if self.actions is not None:
            acts = self.actions.to(dev, dt)
            prior, valid = self._discrete_priors(cur)
            best = acts[torch.where(valid, prior, torch.full_like(prior, -1.0)).argmax(1)]
            same = ((acts[None] == last[:, None]).all(-1) & valid).any(1)  # last is a valid action here
            return torch.where((repeat & same)[:, None], last, best)
        if self.proposal is not None:
            mean = self.proposal.act(cur, deterministic=True).to(dt)
        elif warm is not None and t < warm.shape[1]:
            mean = warm[:, t]
        else:
            mean = torch.zeros_like(last)
        out = torch.where(repeat[:, None], last, mean)
        return torch.maximum(torch.minimum(out, high), low)

    def _rollout(self, objective, cur: LatentState, env: Tensor, depth: Tensor, last: Tensor, warm: Tensor | None,
                 low, high, gamma: float, generator, record: Tensor | None = None) -> tuple[Tensor, int]:
        """`(value [n], evals)`: from the beliefs `cur [n]` of environments `env [n]` (int64; every model
        and reward call reads each row's own environment's context, `RewardContext.rows_of`) at depths
        `depth [n]`, the better of the two default
        policies' (`_default_action`) discounted returns to the horizon, each plus gamma^(H - depth) times the
        objective's bootstrap there: the value of the best known completion. With a continuation the
        weights carry prod c of the rollout's steps, as in `Objective.returns`, and a row stops once its
        episode has ended (unless `record` needs its actions). Both run in one batch of 2n rows. Writes the
        better completion's actions into `record [n, H, A]` when given."""
        h, n, dt = self.config.horizon, cur.batch, cur.deter.dtype
        two = lambda x: torch.cat([x, x]) if x is not None else None  # noqa: E731
        cur, depth, last, warm = LatentState(two(cur.deter), two(cur.stoch)), two(depth), two(last), two(warm)
        env = two(env)
        repeat = torch.arange(2 * n, device=cur.device) < n
        value = torch.zeros(2 * n, device=cur.device, dtype=dt)
        alive = torch.ones(2 * n, device=cur.device, dtype=dt)  # prod c over the rollout's steps so far
        acts = None if record is None else two(record)
        evals = 0
        for t in range(int(depth.min()) if n else h, h):
            busy = depth <= t
            if record is None and objective.terminates:  # past an episode's end nothing counts: stop those rows
                busy &= alive != 0
            rows = torch.nonzero(busy).squeeze(1)
            if rows.numel() == 0:
                break
            now = cur.index(rows)
            u = self._default_action(now, t, last[rows], None if warm is None else warm[rows], repeat[rows], low, high)
            with objective.context.rows_of(env[rows]):
                nxt, r, cont = objective.transition(now, u, generator=generator)
            if objective.terminates:
                value[rows] += discounted(r.to(dt), (gamma ** (t - depth[rows]).to(dt)) * alive[rows])
                alive[rows] = alive[rows] * cont.to(dt)
            else:
                value[rows] += (gamma ** (t - depth[rows]).to(dt)) * r.to(dt)
            cur.deter[rows], cur.stoch[rows], last[rows] = nxt.deter, nxt.stoch, u
            if acts is not None:
                acts[rows, t] = u
            evals += int(rows.numel())
        if objective.bootstraps:
            with objective.context.rows_of(env):
                boot = objective.bootstrap(cur)
            value = value + discounted(boot.to(dt), (gamma ** (h - depth).to(dt)) * alive)
        ranked = torch.where(torch.isfinite(value), value, torch.full_like(value, float("-inf")))
        second = ranked[n:] > ranked[:n]
        if record is not None:
            record.copy_(torch.where(second[:, None, None], acts[n:], acts[:n]))
        return torch.where(second, value[n:], value[:n]), evals

    def _complete(self, objective, state, tree, nodes, warm, low, high, gamma, generator) -> tuple[Tensor, Tensor, int]:
        """`(actions [B, H, A], value [B], evals)`: the path's actions, completed past its end from its last
        belief by the default policy through the model; the value is the path's discounted rewards (as the
        tree evaluated them: r_t weighted by the product of the edges' gamma * c above it), plus the
        completion's, weighted by the product over the whole path, plus the bootstrap at the end."""
        b, h, dev, dt = state.batch, self.config.horizon, state.device, state.deter.dtype
        ar = np.arange(b)
        length = (nodes >= 0).sum(1)
        safe = np.maximum(nodes, 0)
        on = nodes >= 0
        d = np.where(on, tree.disc[ar[:, None], safe], 1.0)  # [B, H] gamma * c of the path's edges
        weight = np.cumprod(np.concatenate([np.ones((b, 1)), d], 1), 1)  # [B, H + 1] prod of the edges above
        r = np.where(on, tree.reward[ar[:, None], safe], 0.0)
        value = np.where(on & (weight[:, :-1] != 0), r * weight[:, :-1], 0.0).sum(1)
        value = torch.from_numpy(value).to(dev, dt)
        path_weight = torch.from_numpy(weight[ar, length]).to(dev, dt)
        bi = torch.arange(b, device=dev)
        actions = tree.acts[bi[:, None], torch.from_numpy(safe).to(dev)].clone()
        last = torch.from_numpy(np.where(length > 0, nodes[ar, np.maximum(length - 1, 0)], 0)).to(dev)
        cur = LatentState(tree.deter[bi, last].clone(), tree.stoch[bi, last].clone())
        depth = torch.from_numpy(length).to(dev)
        tail, evals = self._rollout(objective, cur, bi, depth, tree.acts[bi, last], warm, low, high, gamma, generator,
                                    record=actions)
        return actions, value + discounted(tail, path_weight), evals

    def _result(self, objective, state, tree, choice, warm, low, high, gamma, generator, stats, info, t0) -> Plan:
        b, k, h, dev = state.batch, self.children, self.config.horizon, state.device
        nodes = np.zeros((b, h), dtype=np.int64)
        kt.principal_path(tree.first_child, k, tree.visits, tree.node_value, tree.reward, tree.disc, h, choice,
                          self.config.backup == "max", nodes)
        actions, value, tail = self._complete(objective, state, tree, nodes, warm, low, high, gamma, generator)
        ar = np.arange(b)
        root = tree.first_child[:, :1] + np.arange(k)  # [B, K] the root's children
        n_k = tree.visits[ar[:, None], root]
        q_k = kt.edge_q(tree.reward[ar[:, None], root], tree.disc[ar[:, None], root], tree.node_value[ar[:, None], root])
        chosen = np.where(nodes[:, 0] >= 0, nodes[:, 0] - root[:, 0], 0)
        tree.root_child = np.where(nodes[:, 0] >= 0, chosen, -1)
        info = dict(info, model_evals=stats["evals"] + tail)
        info.update({
            "root_actions": tree.acts[torch.arange(b, device=dev)[:, None], torch.from_numpy(root).to(dev)].clone(),
            "root_visits": torch.from_numpy(n_k.astype(np.int64)).to(dev),
            "root_policy": torch.from_numpy(kt.root_policy(tree, n_k, q_k, chosen, self.config.root == "gumbel",
                                                          self.config.c_visit, self.config.c_scale)).float().to(dev),
            "root_q": torch.from_numpy(q_k).float().to(dev),
            "root_value": torch.from_numpy(q_k[ar, chosen]).float().to(dev),
            "mcts_tree": tree,
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        })
        # a NaN/inf return (e.g. a NaN value function) is -inf, as every other planner reports it (Plan.value)
        value = torch.where(torch.isfinite(value), value, torch.full_like(value, float("-inf")))
        return Plan(actions, value, info)
