"""Monte-Carlo tree search (MCTS) in the learned latent space, with a learned value at the leaves.

MuZero's search (Schrittwieser et al. 2020, "Mastering Atari, Go, Chess and Shogi by Planning with
a Learned Model", Appendix B: pUCT with priors, discount, min-max normalised Q values) over the
learned model, with continuous actions handled by sampling K actions per node as in Sampled
MuZero (Hubert et al. 2021, "Learning and Planning in Complex Action Spaces", ICML), and a
discrete mode where every node's children are a given action set.

Implementation: the tree's bookkeeping is numpy arrays `[B, nodes]` walked by small
numba-compiled kernels (selection; expansion + backup; the final path), and the model runs in
torch, once per simulation for the K children of every environment's leaf (`B * K` rows in one
batched call). A pUCT selection written as batched torch ops costs one small kernel launch per
tree level and operation, which would dominate the model's cost at small B; the kernels keep the
tree's share of a simulation small (`benchmarks/mcts_speed.py` measures it; docs/benchmarks.md).
On a GPU the model and the stored beliefs stay on the device and only the `[B, K]` rewards and
values travel to the host, once per simulation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numba import njit
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .validate import check_choice, check_int, check_positive
from .base import Plan, Policy
from .objective import Objective

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
        c1: pUCT exploration constant c1 (MuZero: 1.25).
        c2: pUCT exploration constant c2 (MuZero: 19652): the bonus grows as
            `c1 + log((N + c2 + 1) / c2)` with the parent's visits N.
        proposal_std: without a proposal policy, the standard deviation, in action units, of the
            Gaussian proposal around the warm start's action at the node's depth (or zero).
        include_mean: make child 0 of every node the proposal's mean: the warm-start action at
            that depth (zero without one), or the policy's deterministic action. The other
            K - 1 children are samples.
        backup: how a node's value U is formed from the returns backed up through it: `"mean"`
            (MuZero: their average W / N) or `"max"` (a Bellman backup over the tree:
            U = max_k (r_k + gamma U_k) over its children, the bootstrap value at unexpanded
            nodes). With a deterministic model and exact leaf values, `"max"` gives the
            optimal value as soon as the optimal path is in the tree; `"mean"` approaches it
            only as the visits concentrate on it, and is less optimistic under noisy values.

    Raises:
        ValueError: on `simulations`, `children` or `horizon` below 1, a non-positive (or
            non-finite) `c1`, `c2` or `proposal_std`, or an unknown `backup` (the message names
            the field).
    """

    simulations: int = 100
    children: int = 8
    horizon: int = 5
    c1: float = 1.25
    c2: float = 19652.0
    proposal_std: float = 1.0
    include_mean: bool = True
    backup: Literal["mean", "max"] = "mean"

    def __post_init__(self) -> None:
        check_choice(self, "backup", ("mean", "max"))
        check_int(self, "simulations", "children", "horizon", minimum=1)
        check_positive(self, "c1", "c2", "proposal_std")

    @property
    def model_evals(self) -> int:
        """Imagined transitions per decision and environment when all simulations expand a node:
        `simulations * children` (fewer when some simulations end at a leaf of depth `horizon`)."""
        return self.simulations * self.children


# ----------------------------------------------------------------------------- tree kernels
# Per environment b the tree is stored in rows [b, node] of these arrays (node 0 is the root,
# the K children of a node are allocated contiguously, first_child[b, n] is the first one or
# -1 while n is unexpanded):
#   visits[b, n]     N(n), simulations that passed through n
#   value_sum[b, n]  W(n), sum of the returns backed up into n (values of n's state)
#   node_value[b, n] U(n), the value estimate of n's state: W(n) / N(n) ("mean" backup) or
#                    max_k (r_k + gamma U(child_k)) ("max" backup) once n has been backed up
#                    into, and v0(n) before
#   reward[b, n]     r of the edge into n (parent state, action -> n)
#   v0[b, n]         the objective's bootstrap value of n's state, computed when n was created
#   prior[b, n]      the prior probability of the edge into n
#   parent[b, n]     parent index (-1 for the root)
# Q(parent, n) = r(n) + gamma * U(n). Non-finite rewards and values are stored as -inf, so
# such edges rank last and no NaN can arise.


@njit(cache=True)
def _descend(first_child, n_children, visits, node_value, reward, prior, qmin, qmax, discount, c1, c2,
             leaves, depths):
    """pUCT descent (MuZero, Appendix B) from the root of every environment to a node without
    children; writes the node and its depth to `leaves[b]`, `depths[b]`."""
    nb = first_child.shape[0]
    for b in range(nb):
        node = 0
        d = 0
        lo = qmin[b]
        hi = qmax[b]
        while first_child[b, node] >= 0:
            fc = first_child[b, node]
            n_parent = visits[b, node]
            explore = math.sqrt(n_parent) * (c1 + math.log((n_parent + c2 + 1.0) / c2))
            best = 0
            best_score = -np.inf
            for k in range(n_children):
                c = fc + k
                q = reward[b, c] + discount * node_value[b, c]
                if math.isfinite(q):
                    qn = (q - lo) / (hi - lo) if hi > lo else 0.0
                    score = qn + prior[b, c] * explore / (1.0 + visits[b, c])
                    if score > best_score:
                        best_score = score
                        best = k
            node = fc + best
            d += 1
        leaves[b] = node
        depths[b] = d


@njit(cache=True)
def _widen(qmin, qmax, b, q):
    if math.isfinite(q):
        if q < qmin[b]:
            qmin[b] = q
        if q > qmax[b]:
            qmax[b] = q


@njit(cache=True)
def _best_child(first_child, n_children, node_value, reward, discount, b, node):
    g = -np.inf
    fc = first_child[b, node]
    for k in range(n_children):
        q = reward[b, fc + k] + discount * node_value[b, fc + k]
        if math.isfinite(q) and q > g:
            g = q
    return g


@njit(cache=True)
def _expand_backup(leaves, expand, start, child_reward, child_value, child_prior, first_child, parent,
                   visits, value_sum, node_value, reward, v0, prior, qmin, qmax, discount, use_max):
    """Attach the K evaluated children `[B, K]` to the leaves that `expand`, then back up.

    The value backed up from an expanded leaf is its one-step lookahead max_k (r_k + gamma v_k)
    over the new children; from a leaf at the depth limit, its bootstrap value v0. Going up the
    path, every node gets N += 1 and W += G with G <- r + gamma G (MuZero's backup); U is W / N,
    or with `use_max` the best child's r + gamma U recomputed bottom-up (a Bellman backup). The
    min-max bounds of the Q values are widened with every new Q. A NaN/inf reward or value of a
    child is stored as -inf; returns the number of such children.
    """
    nb, nk = child_reward.shape
    bad = 0
    for b in range(nb):
        leaf = leaves[b]
        if expand[b]:
            first_child[b, leaf] = start
            for k in range(nk):
                c = start + k
                r = child_reward[b, k]
                v = child_value[b, k]
                if not (math.isfinite(r) and math.isfinite(v)):
                    bad += 1
                    if not math.isfinite(r):
                        r = -np.inf
                    if not math.isfinite(v):
                        v = -np.inf
                reward[b, c] = r
                v0[b, c] = v
                node_value[b, c] = v
                prior[b, c] = child_prior[b, k]
                parent[b, c] = leaf
                visits[b, c] = 0.0
                value_sum[b, c] = 0.0
                _widen(qmin, qmax, b, r + discount * v)
            g = _best_child(first_child, nk, node_value, reward, discount, b, leaf)
        else:
            g = v0[b, leaf]
        node = leaf
        while True:
            visits[b, node] += 1.0
            value_sum[b, node] += g
            if use_max:
                if first_child[b, node] >= 0:
                    node_value[b, node] = _best_child(first_child, nk, node_value, reward, discount, b, node)
            else:
                node_value[b, node] = value_sum[b, node] / visits[b, node]
            if node == 0:
                break
            _widen(qmin, qmax, b, reward[b, node] + discount * node_value[b, node])
            g = reward[b, node] + discount * g
            node = parent[b, node]
    return bad


@njit(cache=True)
def _principal_path(first_child, n_children, visits, node_value, reward, discount, horizon, nodes):
    """The most visited path from the root: at every level the child with the most visits
    (ties: the higher Q; edges with a non-finite Q rank last); -1 past the expanded part."""
    nb = first_child.shape[0]
    for b in range(nb):
        node = 0
        for t in range(horizon):
            fc = first_child[b, node]
            if fc < 0:
                for u in range(t, horizon):
                    nodes[b, u] = -1
                break
            best = 0
            best_n = -1.0
            best_q = -np.inf
            for k in range(n_children):
                c = fc + k
                q = reward[b, c] + discount * node_value[b, c]
                n = visits[b, c] if math.isfinite(q) else -0.5
                if n > best_n or (n == best_n and q > best_q):
                    best_n = n
                    best_q = q
                    best = k
            node = fc + best
            nodes[b, t] = node


class MCTS:
    """Sampled MuZero-style tree search over a world model, batched over B environments.

    One plan call runs `simulations` simulations; each, for every environment at once:

    1. **Selection**: from the root, descend by pUCT (MuZero) to a node without children,
       `argmax_k Qn(k) + P(k) sqrt(N) / (1 + N_k) (c1 + log((N + c2 + 1) / c2))`, where N is
       the parent's visits, N_k the child's, P(k) its prior and Qn(k) its Q value min-max
       normalised over all Q values seen in this environment's tree. Q(k) = r_k + gamma U_k,
       with U_k the child's value: the lookahead V(s_k) until a simulation has been backed up
       through it (every child is evaluated when it is created), then W_k / N_k (`backup=
       "mean"`) or max over its children of r + gamma U (`backup="max"`). Edges with a
       non-finite reward or value rank last.
    2. **Expansion**: if the node is above the depth limit, propose K actions at it and
       evaluate all K children in one batched model call over all environments
       (`objective.step` on `B * K` rows: next belief and reward) and one value call
       (`objective.bootstrap`: the learned value V, zero without one).
    3. **Backup**: the expanded node's value is the best lookahead max_k (r_k + gamma V(s_k));
       a node at the depth limit keeps V. It is backed up the path, `G <- r + gamma G`, adding 1
       to N and G to W of every node (MuZero's backup with the objective's `discount`); with
       `backup="max"` every node on the path also recomputes U as its best child's Q.

    Proposals (the children of a node):

    - `proposal` given (any `Policy`, e.g. a distilled one): K samples of `proposal.act` at the node
      (child 0 its deterministic action when `include_mean`).
    - discrete `actions [M, A]` given: all M actions at every node (K = M).
    - otherwise a Gaussian with std `proposal_std` around the warm start's action at the node's
      depth (around zero without a warm start or past its end); child 0 is the mean itself when
      `include_mean`.

    All proposals are clipped into `[action_low, action_high]`. The priors over a node's K
    children are uniform, 1/K: with the children sampled from the proposal itself, Sampled
    MuZero's prior (β̂/β)·π with β = π reduces to the empirical distribution β̂ of the samples,
    1/K each (Hubert et al. 2021, Sec. 4). No progressive widening, no root noise.

    The model's stochastic transition is sampled once per edge (as MuZero treats its learned
    model as deterministic): a child's belief and reward are fixed once created.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan`:

    - `actions [B, H, A]` with H = `horizon`: the root's most visited child's action first (ties:
      the higher Q), then the most visited path below it; past the expanded part of that path,
      the Gaussian proposal's mean (the warm start's action or zero; with a proposal policy or an action
      set, zero clipped into the bounds).
    - `value [B]`: the root value, Q of the chosen root action.
    - `info`: `root_actions [B, K, A]`, `root_visits [B, K]` (int64 counts), `root_policy
      [B, K]` (visits normalised; one-hot on the chosen action if no child was visited),
      `root_value [B]`, `root_q [B, K]`, `simulations` (= `iterations`), `model_evals`
      (imagined transitions run, summed over environments), `nonfinite` (children with a
      NaN/inf reward or value), `max_depth` (deepest expanded level), `plan_ms`.

    Anytime: `deadline` (absolute `time.perf_counter()`) is checked after every simulation;
    the first simulation (the root's expansion) always runs.

    Args:
        config: `MCTSConfig`; keyword `overrides` replace fields.
        proposal: optional `Policy` whose samples are a node's children.
        actions: optional `[M, A]` discrete action set (M >= 1), used instead of sampling.

    Raises:
        ValueError: `actions` not 2-D or containing NaN/inf, both `proposal` and `actions` given
            (here); at plan time: `actions` of the wrong dimension or outside the model's
            bounds, a warm start that is not `[B, H', A]`, a proposal returning a wrong shape.
        TypeError: `proposal` without an `act` method.

    Source: Schrittwieser et al. 2020 (MuZero), Appendix B; Hubert et al. 2021 (Sampled
    MuZero); Silver et al. 2017 (AlphaGo Zero) for pUCT with priors.
    """

    def __init__(
        self,
        config: MCTSConfig | None = None,
        *,
        proposal: Policy | None = None,
        actions: Tensor | None = None,
        **overrides,
    ) -> None:
        self.config = dataclasses.replace(config or MCTSConfig(), **overrides)
        if proposal is not None and not callable(getattr(proposal, "act", None)):
            raise TypeError(f"MCTS: proposal must have an act(state, *, generator, deterministic) method; got {proposal!r}")
        if proposal is not None and actions is not None:
            raise ValueError("MCTS: give either a proposal policy or a discrete action set, not both")
        if actions is not None:
            actions = torch.as_tensor(actions, dtype=torch.float32)
            if actions.dim() != 2 or actions.shape[0] < 1:
                raise ValueError(f"MCTS: actions must be [M, A] with M >= 1; got {tuple(actions.shape)}")
            if not torch.isfinite(actions).all():
                raise ValueError("MCTS: actions contain NaN or inf")
        self.proposal = proposal
        self.actions = actions

    def __repr__(self) -> str:
        mode = "policy" if self.proposal is not None else ("discrete" if self.actions is not None else "gaussian")
        return f"MCTS({self.config}, proposal={mode})"

    @property
    def children(self) -> int:
        """K, the children of every expanded node (the action set's size in the discrete mode)."""
        return self.actions.shape[0] if self.actions is not None else self.config.children

    # ------------------------------------------------------------------ proposals
    def _propose(
        self, leaf: LatentState, depth: np.ndarray, warm: Tensor | None, low: Tensor, high: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        """`[n, K, A]` actions for the `n` leaves `leaf` at tree depths `depth [n]`."""
        c = self.config
        n, k, dev = leaf.batch, self.children, leaf.device
        a = low.shape[0]
        if self.actions is not None:
            out = self.actions.to(dev)[None].expand(n, k, a)
        elif self.proposal is not None:
            sampled = self.proposal.act(leaf.expand(k), generator=generator, deterministic=False)
            if not isinstance(sampled, Tensor) or sampled.shape != (n * k, a):
                raise ValueError(f"MCTS: proposal.act must return [N={n * k}, A={a}]; got {getattr(sampled, 'shape', sampled)}")
            out = sampled.reshape(n, k, a)
            if c.include_mean:
                mode = self.proposal.act(leaf, generator=generator, deterministic=True)
                if not isinstance(mode, Tensor) or mode.shape != (n, a):
                    raise ValueError(f"MCTS: proposal.act must return [N={n}, A={a}]; got {getattr(mode, 'shape', mode)}")
                out = torch.cat([mode[:, None], out[:, 1:]], dim=1)
        else:
            if warm is not None:
                d = torch.as_tensor(depth, device=dev)
                ok = d < warm.shape[1]
                mean = warm[torch.arange(n, device=dev), d.clamp_max(warm.shape[1] - 1)] * ok[:, None]
            noise = torch.randn(n, k, a, generator=generator, device=dev)
            if c.include_mean:
                noise[:, 0] = 0.0
            out = noise.mul_(c.proposal_std)
            if warm is not None:
                out = out.add_(mean[:, None])
        return torch.clamp(out, low, high)

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
        """Search from every belief in `state` (`[B]` rows); see the class docstring."""
        t0 = time.perf_counter()
        c = self.config
        model = objective.model
        b, a, k, h = state.batch, objective.action_dim, self.children, c.horizon
        dev = state.device
        low = model.action_low.to(dev)
        high = model.action_high.to(dev)
        if self.actions is not None:
            if self.actions.shape[1] != a:
                raise ValueError(f"MCTS: actions must be [M, A={a}]; got {tuple(self.actions.shape)}")
            if bool((self.actions.to(dev) < low).any() or (self.actions.to(dev) > high).any()):
                raise ValueError("MCTS: the discrete actions lie outside the model's action bounds")
        warm = None
        if warm_start is not None:
            wa = warm_start.actions
            if wa.dim() != 3 or wa.shape[0] != b or wa.shape[2] != a:
                raise ValueError(f"MCTS.plan: warm_start.actions must be [B={b}, H', A={a}]; got {tuple(wa.shape)}")
            warm = wa.to(dev)
        gamma = float(objective.discount)
        use_max = c.backup == "max"
        cap = 1 + c.simulations * k
        first_child = np.full((b, cap), -1, dtype=np.int64)
        parent = np.full((b, cap), -1, dtype=np.int64)
        visits = np.zeros((b, cap))
        value_sum = np.zeros((b, cap))
        node_value = np.zeros((b, cap))
        reward = np.zeros((b, cap))
        v0 = np.zeros((b, cap))
        prior = np.zeros((b, cap))
        qmin = np.full(b, np.inf)
        qmax = np.full(b, -np.inf)
        leaves = np.zeros(b, dtype=np.int64)
        depths = np.zeros(b, dtype=np.int64)
        child_prior = np.full((b, k), 1.0 / k)
        rew_np = np.zeros((b, k))  # the children's rewards and values, handed to the kernel
        val_np = np.zeros((b, k))
        ar_np = np.arange(b)
        ar_t = torch.arange(b, device=dev)
        deter = state.deter.new_zeros(b, cap, state.deter.shape[1])
        stoch = state.stoch.new_zeros(b, cap, state.stoch.shape[1])
        acts = torch.zeros(b, cap, a, device=dev)
        deter[:, 0] = state.deter
        stoch[:, 0] = state.stoch
        n_nodes, evals, nonfinite, sims, levels = 1, 0, 0, 0, 0
        for _ in range(c.simulations):
            _descend(first_child, k, visits, node_value, reward, prior, qmin, qmax, gamma, c.c1, c.c2, leaves, depths)
            expand = depths < h
            if expand.any():
                every = bool(expand.all())
                rows = ar_np if every else np.nonzero(expand)[0]
                rows_t = ar_t if every else torch.from_numpy(rows).to(dev)
                leaf_t = torch.from_numpy(leaves[rows]).to(dev)
                leaf = LatentState(deter[rows_t, leaf_t], stoch[rows_t, leaf_t])
                prop = self._propose(leaf, depths[rows], None if warm is None else warm[rows_t], low, high, generator)
                n = rows.shape[0]
                nxt, r = objective.step(leaf.expand(k), prop.reshape(n * k, a), generator=generator)
                v = objective.bootstrap(nxt)
                sl = slice(n_nodes, n_nodes + k)
                if every:
                    deter[:, sl] = nxt.deter.reshape(n, k, -1)
                    stoch[:, sl] = nxt.stoch.reshape(n, k, -1)
                    acts[:, sl] = prop
                    rew_np[:] = r.reshape(n, k).cpu().numpy()
                    val_np[:] = v.reshape(n, k).cpu().numpy()
                else:
                    deter[rows_t, sl] = nxt.deter.reshape(n, k, -1)
                    stoch[rows_t, sl] = nxt.stoch.reshape(n, k, -1)
                    acts[rows_t, sl] = prop
                    rew_np[rows] = r.reshape(n, k).cpu().numpy()
                    val_np[rows] = v.reshape(n, k).cpu().numpy()
                evals += n * k
                levels = max(levels, int(depths[rows].max()) + 1)
            nonfinite += _expand_backup(leaves, expand, n_nodes, rew_np, val_np, child_prior, first_child, parent,
                                        visits, value_sum, node_value, reward, v0, prior, qmin, qmax, gamma, use_max)
            if expand.any():
                n_nodes += k
            sims += 1
            if deadline is not None and time.perf_counter() >= deadline:
                break
        return self._result(state, warm, first_child, visits, node_value, reward, acts, gamma, low, high,
                            info={"simulations": sims, "iterations": sims, "model_evals": evals,
                                  "nonfinite": nonfinite, "max_depth": levels}, t0=t0)

    def _result(self, state, warm, first_child, visits, node_value, reward, acts, gamma, low, high, *, info, t0) -> Plan:
        b, k, h, dev = state.batch, self.children, self.config.horizon, state.device
        a = acts.shape[2]
        nodes = np.zeros((b, h), dtype=np.int64)
        _principal_path(first_child, k, visits, node_value, reward, gamma, h, nodes)
        root = slice(1, 1 + k)  # the first simulation expands every root: children 1..K
        n_k = visits[:, root]
        q_k = reward[:, root] + gamma * node_value[:, root]
        chosen = nodes[:, 0] - 1
        ar = np.arange(b)
        root_value = q_k[ar, chosen]
        total = n_k.sum(axis=1, keepdims=True)
        onehot = np.zeros((b, k))
        onehot[ar, chosen] = 1.0
        policy = np.where(total > 0, n_k / np.maximum(total, 1.0), onehot)
        # the plan: the principal path's actions, then the proposal's mean
        nodes_t = torch.from_numpy(nodes).to(dev)
        bi = torch.arange(b, device=dev)[:, None].expand(b, h)
        path = acts[bi, nodes_t.clamp_min(0)]
        pad = torch.zeros(b, h, a, device=dev)
        if warm is not None and self.actions is None and self.proposal is None:
            m = min(h, warm.shape[1])
            pad[:, :m] = warm[:, :m]
        pad = torch.maximum(torch.minimum(pad, high), low)
        actions = torch.where(nodes_t[:, :, None] >= 0, path, pad)
        info = dict(info)
        info.update({
            "root_actions": acts[:, root].clone(),
            "root_visits": torch.from_numpy(n_k.astype(np.int64)).to(dev),
            "root_policy": torch.from_numpy(policy).float().to(dev),
            "root_q": torch.from_numpy(q_k).float().to(dev),
            "root_value": torch.from_numpy(root_value).float().to(dev),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        })
        return Plan(actions, info["root_value"].clone(), info)
