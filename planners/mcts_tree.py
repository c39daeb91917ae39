"""The search tree of `MCTS`: numpy arrays walked by numba-compiled kernels.

Per environment b the tree is stored in rows `[b, node]` of these arrays (node 0 is the root, the K
children of a node are allocated contiguously, `first_child[b, n]` is the first one or -1 while n
is unexpanded, `size[b]` the nodes in use):

- `visits[b, n]`     N(n), simulations that passed through n
- `value_sum[b, n]`  W(n), sum of the returns backed up into n (values of n's state)
- `node_value[b, n]` U(n), the value estimate of n's state: W(n) / N(n) ("mean" backup) or
  max_k (r_k + gamma U(child_k)) ("max" backup) once n has been backed up into, and v0(n) before
- `reward[b, n]`     r of the edge into n (parent state, action -> n)
- `v0[b, n]`         the objective's bootstrap value of n's state, computed when n was created
- `prior[b, n]`      the prior probability of the edge into n (0 for an invalid action)
- `disc[b, n]`       gamma * c(n), the discount of the edge into n: the objective's discount times
  its continuation c of the step into n (`Objective.transition`; c = 1 without a continuation),
  so a node where the episode ends has `disc` 0 and is absorbing
- `parent[b, n]`     parent index (-1 for the root)

Q(parent, n) = r(n) + disc(n) * U(n) (`r(n)` alone when `disc(n)` is 0: nothing after an episode's
end counts, not even a non-finite value). Non-finite rewards and values, and invalid (masked)
actions, are stored as -inf, so such edges rank last and no NaN can arise. The search never
expands an absorbing node: the descent stops there as at the depth limit.

Kernels: pUCT descent (MuZero, Schrittwieser et al. 2020, Appendix B) with an optional Gumbel
pick at the root (Danihelka et al. 2022, "Policy improvement by planning with Gumbel", ICLR:
Gumbel-top-k with sequential halving), expansion + backup, the plan's path, and the extraction of
a subtree for reuse in the next call (as AlphaZero keeps the subtree below the played move).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
import torch
from torch import Tensor

__all__ = ["Tree", "edge_q", "halving_schedule", "q_bounds", "root_policy", "start_tree"]


@dataclass
class Tree:
    """The tree of one plan call (numpy bookkeeping `[B, cap]`; beliefs and actions in torch).

    Kept in `Plan.info["mcts_tree"]` so that the next call can reuse the subtree below the executed
    action (`root_child [B]`, the chosen child of each root). `deter [B, cap, D]`, `stoch [B, cap, S]`
    and `acts [B, cap, A]` are the beliefs of the nodes and the actions of the edges into them.
    """

    first_child: np.ndarray
    parent: np.ndarray
    visits: np.ndarray
    value_sum: np.ndarray
    node_value: np.ndarray
    reward: np.ndarray
    v0: np.ndarray
    prior: np.ndarray
    disc: np.ndarray
    size: np.ndarray
    deter: Tensor
    stoch: Tensor
    acts: Tensor
    children: int
    horizon: int
    root_child: np.ndarray | None = None
    objective_key: tuple | None = None

    @classmethod
    def empty(cls, b: int, cap: int, children: int, horizon: int, deter: Tensor, stoch: Tensor, a: int) -> "Tree":
        """A tree with only its roots, whose beliefs are `deter [B, D]`, `stoch [B, S]`."""
        d = deter.new_zeros(b, cap, deter.shape[1])
        s = stoch.new_zeros(b, cap, stoch.shape[1])
        d[:, 0], s[:, 0] = deter, stoch
        return cls(
            np.full((b, cap), -1, np.int64), np.full((b, cap), -1, np.int64), np.zeros((b, cap)), np.zeros((b, cap)),
            np.zeros((b, cap)), np.zeros((b, cap)), np.zeros((b, cap)), np.zeros((b, cap)), np.ones((b, cap)),
            np.ones(b, np.int64), d, s, deter.new_zeros(b, cap, a), children, horizon,
        )

    def arrays(self) -> tuple:
        """The numpy arrays in the kernels' order: first_child, parent, visits, value_sum, node_value, reward, v0, prior,
        disc."""
        return (self.first_child, self.parent, self.visits, self.value_sum, self.node_value, self.reward, self.v0,
                self.prior, self.disc)


def halving_schedule(considered: int, simulations: int) -> np.ndarray:
    """`[simulations]` the visit count a root action must have to be picked at each simulation.

    Sequential halving (Karnin et al. 2013) as Gumbel MuZero uses it: ceil(log2 m) phases; in each
    phase every one of the actions still considered gets the same number of visits,
    max(1, floor(S / (phases * remaining))), and then half of them (at least 2) remain. Picking, at
    simulation i, the best-scoring action among those with exactly `schedule[i]` visits carries out
    the halving without storing the considered set. With m = 1 the one action is always picked.
    """
    if considered <= 1:
        return np.arange(simulations, dtype=np.int64)
    phases = math.ceil(math.log2(considered))
    out: list[int] = []
    remaining, v = considered, 0
    while len(out) < simulations:
        per = max(1, simulations // (phases * remaining))
        for _ in range(per):
            out.extend([v] * remaining)
            v += 1
        remaining = max(2, remaining // 2)
    return np.asarray(out[:simulations], dtype=np.int64)


@njit(cache=True)
def _q(r, d, v):
    """Q of an edge with reward r, discount d (gamma * c) and child value v: r alone at an episode's end."""
    if d == 0.0:
        return r
    return r + d * v


def edge_q(reward: np.ndarray, disc: np.ndarray, node_value: np.ndarray) -> np.ndarray:
    """Q = r + disc * U of edges (arrays of one shape), r alone where `disc` is 0 (the numpy `_q`)."""
    with np.errstate(invalid="ignore"):
        return np.where(disc == 0.0, reward, reward + disc * node_value)


@njit(cache=True)
def root_scores(first_child, n_children, visits, node_value, reward, disc, logits, c_visit, c_scale, out):
    """`out [B, K]` = g + logits + sigma(q_hat) of every root child (Gumbel MuZero's score):
    `logits [B, K]` holds the Gumbel noise plus the prior logits (-inf for invalid actions), q_hat the
    child's Q min-max normalised over the root's finite Q values, sigma(q) = (c_visit + max N) c_scale q.
    Children with a non-finite Q score -inf."""
    nb = first_child.shape[0]
    for b in range(nb):
        fc = first_child[b, 0]
        lo, hi, nmax = np.inf, -np.inf, 0.0
        for k in range(n_children):
            q = _q(reward[b, fc + k], disc[b, fc + k], node_value[b, fc + k])
            if math.isfinite(q):
                lo = min(lo, q)
                hi = max(hi, q)
            nmax = max(nmax, visits[b, fc + k])
        for k in range(n_children):
            q = _q(reward[b, fc + k], disc[b, fc + k], node_value[b, fc + k])
            if math.isfinite(q) and math.isfinite(logits[b, k]):
                qn = (q - lo) / (hi - lo) if hi > lo else 0.5
                out[b, k] = logits[b, k] + (c_visit + nmax) * c_scale * qn
            else:
                out[b, k] = -np.inf


@njit(cache=True)
def gumbel_pick(scores, root_new, target, picks):
    """`picks [B]`: the root child with the best score among those with `target[b]` visits in this call
    (`root_new [B, K]`); if none has (a reused tree past the schedule), the best score overall; -1 when
    no child has a finite score."""
    nb, nk = scores.shape
    for b in range(nb):
        best, best_s, any_k, any_s = -1, -np.inf, -1, -np.inf
        for k in range(nk):
            s = scores[b, k]
            if s > any_s:
                any_s, any_k = s, k
            if root_new[b, k] == target[b] and s > best_s:
                best_s, best = s, k
        picks[b] = best if best >= 0 else any_k


@njit(cache=True)
def descend(first_child, n_children, visits, node_value, reward, prior, qmin, qmax, disc, c1, c2, horizon,
            root_pick, leaves, depths):
    """pUCT descent (MuZero, Appendix B) from the root of every environment to a node without children;
    writes the node and its depth to `leaves[b]`, `depths[b]`. At the root, `root_pick[b] >= 0` is taken
    instead (the Gumbel pick). A node whose children all have a non-finite Q (every action invalid or
    NaN) is a dead end, and a node where the episode ends (`disc` 0) is absorbing: the descent stops
    there with depth `horizon`, so it is not expanded (again)."""
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
            best = -1
            best_score = -np.inf
            for k in range(n_children):
                c = fc + k
                q = _q(reward[b, c], disc[b, c], node_value[b, c])
                if math.isfinite(q):
                    qn = (q - lo) / (hi - lo) if hi > lo else 0.0
                    score = qn + prior[b, c] * explore / (1.0 + visits[b, c])
                    if score > best_score or best < 0:
                        best_score = score
                        best = k
            if node == 0 and root_pick[b] >= 0:
                best = root_pick[b]
            if best < 0:
                d = horizon
                break
            node = fc + best
            d += 1
            if disc[b, node] == 0.0:  # the episode ends on the way into node: nothing below it counts
                d = horizon
                break
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
def _best_child(first_child, n_children, node_value, reward, disc, b, node):
    g = -np.inf
    fc = first_child[b, node]
    for k in range(n_children):
        q = _q(reward[b, fc + k], disc[b, fc + k], node_value[b, fc + k])
        if math.isfinite(q) and q > g:
            g = q
    return g


@njit(cache=True)
def expand_backup(leaves, expand, start, child_reward, child_value, child_disc, child_prior, valid, first_child,
                  parent, visits, value_sum, node_value, reward, v0, prior, disc, qmin, qmax, use_max):
    """Attach the K evaluated children `[B, K]` at node `start[b]` on to the leaves that `expand`, then back up.

    `child_disc [B, K]` is gamma * c of each new edge (c the objective's continuation). The value backed
    up from an expanded leaf is its one-step lookahead max_k (r_k + disc_k v_k) over the new valid
    children (its own v0 if none is finite); from a leaf that is not expanded (at the depth limit, a
    dead end, or absorbing), v0. Going up the path, every node gets N += 1 and W += G with
    G <- r + disc G (MuZero's backup, with the edge's discount gamma * c); U is W / N, or with `use_max`
    the best child's r + disc U recomputed bottom-up (a Bellman backup). The min-max bounds of the Q
    values are widened with every new Q. A child with a NaN/inf reward or value (the value only where
    it counts: `disc` > 0), or an invalid action (`valid[b, k]` False), is stored as -inf; returns the
    number of the former.
    """
    nb, nk = child_reward.shape
    bad = 0
    for b in range(nb):
        leaf = leaves[b]
        if expand[b]:
            s = start[b]
            first_child[b, leaf] = s
            for k in range(nk):
                c = s + k
                r = child_reward[b, k]
                v = child_value[b, k]
                dk = child_disc[b, k]
                if dk == 0.0 and not math.isfinite(v):
                    v = 0.0  # the episode ends here: the value after it does not count
                if not valid[b, k]:
                    r = -np.inf
                    v = -np.inf
                elif not (math.isfinite(r) and math.isfinite(v) and math.isfinite(dk)):
                    bad += 1
                    if not math.isfinite(r):
                        r = -np.inf
                    if not math.isfinite(v) or not math.isfinite(dk):
                        v = -np.inf
                    if not math.isfinite(dk):
                        dk = 1.0
                reward[b, c] = r
                disc[b, c] = dk
                v0[b, c] = v
                node_value[b, c] = v
                prior[b, c] = child_prior[b, k]
                parent[b, c] = leaf
                visits[b, c] = 0.0
                value_sum[b, c] = 0.0
                _widen(qmin, qmax, b, _q(r, dk, v))
            g = _best_child(first_child, nk, node_value, reward, disc, b, leaf)
            if not math.isfinite(g):
                g = v0[b, leaf]
        else:
            g = v0[b, leaf]
        node = leaf
        while True:
            visits[b, node] += 1.0
            value_sum[b, node] += g
            if use_max:
                if first_child[b, node] >= 0:
                    u = _best_child(first_child, nk, node_value, reward, disc, b, node)
                    node_value[b, node] = u if math.isfinite(u) else v0[b, node]
            else:
                node_value[b, node] = value_sum[b, node] / visits[b, node]
            if node == 0:
                break
            _widen(qmin, qmax, b, _q(reward[b, node], disc[b, node], node_value[b, node]))
            g = _q(reward[b, node], disc[b, node], g)
            node = parent[b, node]
    return bad


@njit(cache=True)
def principal_path(first_child, n_children, visits, node_value, reward, disc, horizon, root_choice, by_q, nodes):
    """`nodes [B, H]`: the plan's path from the root: `root_choice[b]` first, then at every level the child
    with the best Q (`by_q`, with the "max" backup) or the most visits (ties: the higher Q); edges with a
    non-finite Q rank last; -1 past the expanded part."""
    nb = first_child.shape[0]
    for b in range(nb):
        node = 0
        for t in range(horizon):
            fc = first_child[b, node]
            if fc < 0:
                for u in range(t, horizon):
                    nodes[b, u] = -1
                break
            best = -1
            best_n = -1.0
            best_q = -np.inf
            for k in range(n_children):
                c = fc + k
                q = _q(reward[b, c], disc[b, c], node_value[b, c])
                n = visits[b, c] if math.isfinite(q) else -0.5
                if by_q:
                    n = 0.0 if math.isfinite(q) else -0.5
                if best < 0 or n > best_n or (n == best_n and q > best_q):
                    best_n = n
                    best_q = q
                    best = k
            if t == 0 and root_choice[b] >= 0:
                best = root_choice[b]
            if not math.isfinite(_q(reward[b, fc + best], disc[b, fc + best], node_value[b, fc + best])):
                for u in range(t, horizon):  # every action here is invalid or non-finite: the path ends
                    nodes[b, u] = -1
                break
            node = fc + best
            nodes[b, t] = node


@njit(cache=True)
def extract(first_child, parent, visits, value_sum, node_value, reward, v0, prior, disc, size, roots, n_children,
            nf, npar, nvis, nsum, nval, nrew, nv0, npri, ndisc, nsize, src):
    """Copy, for every environment with `roots[b] >= 0`, the subtree below node `roots[b]` into the new
    arrays (`n*`), breadth first, with that node as the new root (index 0); `src[b, i]` is the old index
    of new node i (-1 unused), for the caller to move the beliefs and actions. Rows with `roots[b] < 0`
    keep only an empty root. The kept nodes' statistics are unchanged."""
    nb = first_child.shape[0]
    for b in range(nb):
        r = roots[b]
        if r < 0:
            nsize[b] = 1
            continue
        src[b, 0] = r
        n_new = 1
        head = 0
        while head < n_new:
            old = src[b, head]
            new = head
            nvis[b, new] = visits[b, old]
            nsum[b, new] = value_sum[b, old]
            nval[b, new] = node_value[b, old]
            nrew[b, new] = reward[b, old]
            nv0[b, new] = v0[b, old]
            npri[b, new] = prior[b, old]
            ndisc[b, new] = disc[b, old]
            fc = first_child[b, old]
            if fc >= 0:
                nf[b, new] = n_new
                for k in range(n_children):
                    src[b, n_new + k] = fc + k
                    npar[b, n_new + k] = new
                n_new += n_children
            head += 1
        npar[b, 0] = -1
        nrew[b, 0] = 0.0
        ndisc[b, 0] = 1.0
        nsize[b] = n_new


def q_bounds(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """`(qmin [B], qmax [B])` the min-max bounds of the finite Q values already in the tree (a reused subtree's)."""
    q = edge_q(tree.reward, tree.disc, tree.node_value)
    used = (np.arange(q.shape[1])[None] < tree.size[:, None]) & (tree.parent >= 0) & np.isfinite(q)
    return np.where(used, q, np.inf).min(1), np.where(used, q, -np.inf).max(1)


def objective_key(objective) -> tuple:
    """What a kept tree's rewards, values and discounts depend on: the objective's discount, its terms (by
    identity of the user functions, the terminal and continuation terms included) and its context values
    (copied); a tree is reused only under an equal key."""
    terms = tuple(getattr(t, "term", t) for t in objective.rewards)
    context = tuple((k, v.detach().clone() if isinstance(v, torch.Tensor) else getattr(v, "value", v))
                    for k, v in objective.context.values.items())
    cont = getattr(objective, "continuation", None)
    return (objective.discount, terms, objective.value, getattr(objective.terminal, "term", objective.terminal),
            getattr(cont, "term", cont), context)


def _same_key(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None or len(a) != len(b) or a[:5] != b[:5] or len(a[5]) != len(b[5]):
        return False
    for (ka, va), (kb, vb) in zip(a[5], b[5]):
        if ka != kb:
            return False
        if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
            if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.shape == vb.shape
                    and torch.equal(va, vb.to(va.device))):
                return False
        elif va != vb:
            return False
    return True


def _fits(old: object, state, children: int, horizon: int, key: tuple | None = None) -> bool:
    """Whether `old` is a tree this search can continue: same K, H, batch, dtype, device, belief sizes and
    objective (`objective_key`)."""
    return (isinstance(old, Tree) and old.root_child is not None and old.children == children
            and _same_key(old.objective_key, key)
            and old.horizon == horizon and old.deter.shape[0] == state.batch and old.deter.dtype == state.deter.dtype
            and old.deter.device == state.device and old.deter.shape[2] == state.deter.shape[1]
            and old.stoch.shape[2] == state.stoch.shape[1])


def start_tree(old: object, state, children: int, horizon: int, simulations: int, a: int,
               tol: float, key: tuple | None = None) -> tuple[Tree, int]:
    """The tree a search starts from, and the number of environments whose subtree was kept.

    `old` is the previous call's tree (`Plan.info["mcts_tree"]`) or None. For every environment whose
    belief `state [B]` equals (within `tol` per entry) the one `old` predicted for its executed root child,
    the subtree below that child is kept, with the new belief as its root; the others start afresh. Nothing
    is kept unless `key` (`objective_key` of this call's objective) equals the old tree's. The arrays have
    room for `simulations * children` more nodes."""
    b, k, extra = state.batch, children, simulations * children + 1
    if not _fits(old, state, children, horizon, key):
        return Tree.empty(b, extra, k, horizon, state.deter, state.stoch, a), 0
    child = np.where(old.root_child >= 0, old.first_child[:, 0] + old.root_child, -1)
    ar = torch.arange(b, device=state.device)
    idx = torch.from_numpy(np.maximum(child, 0)).to(state.device)
    close = torch.ones(b, dtype=torch.bool, device=state.device)
    for mine, theirs in ((state.deter, old.deter), (state.stoch, old.stoch)):
        if mine.shape[1]:
            close &= (theirs[ar, idx] - mine).abs().amax(1) <= tol
    roots = np.where((child >= 0) & close.cpu().numpy(), child, -1)
    if (roots < 0).all():
        return Tree.empty(b, extra, k, horizon, state.deter, state.stoch, a), 0
    cap = old.first_child.shape[1]
    new = Tree.empty(b, cap, k, horizon, state.deter, state.stoch, a)
    src = np.full((b, cap), -1, np.int64)
    extract(*old.arrays(), old.size, roots, k, *new.arrays(), new.size, src)
    size = int(new.size.max()) + extra
    pad = ((0, 0), (0, max(0, size - cap)))
    for name in ("first_child", "parent", "visits", "value_sum", "node_value", "reward", "v0", "prior", "disc"):
        arr = getattr(new, name)
        setattr(new, name, np.pad(arr, pad, constant_values=-1 if arr.dtype == np.int64 else 0)[:, :size])
    keep = torch.from_numpy(np.pad(src, pad, constant_values=-1)[:, :size]).to(state.device)
    got = keep[:, :, None] >= 0
    for name in ("deter", "stoch", "acts"):
        t_old = getattr(old, name)
        setattr(new, name, torch.where(got, t_old[ar[:, None], keep.clamp_min(0)], t_old.new_zeros(())))
    new.deter[:, 0], new.stoch[:, 0] = state.deter, state.stoch  # the root is the new belief (within tol)
    return new, int((roots >= 0).sum())


def root_policy(tree: Tree, n_k: np.ndarray, q_k: np.ndarray, chosen: np.ndarray, gumbel: bool, c_visit: float,
                c_scale: float) -> np.ndarray:
    """`[B, K]` the distillation target over the root's children: Gumbel MuZero's improved policy
    softmax(log prior + sigma(q_hat)) (`gumbel`), else the visit counts `n_k [B, K]` normalised; one-hot on
    `chosen [B]` where neither is defined."""
    b, k = n_k.shape
    ar = np.arange(b)
    onehot = np.zeros((b, k))
    onehot[ar, chosen] = 1.0
    if not gumbel:
        total = n_k.sum(axis=1, keepdims=True)
        return np.where(total > 0, n_k / np.maximum(total, 1.0), onehot)
    prior = tree.prior[ar[:, None], tree.first_child[:, :1] + np.arange(k)]
    ok = np.isfinite(q_k) & (prior > 0)
    lo = np.where(ok, q_k, np.inf).min(1, keepdims=True)
    hi = np.where(ok, q_k, -np.inf).max(1, keepdims=True)
    with np.errstate(invalid="ignore"):  # rows without a finite value give inf - inf here, masked to 0.5 by `where`
        qn = np.where(hi > lo, (np.where(ok, q_k, lo) - lo) / np.where(hi > lo, hi - lo, 1.0), 0.5)
    z = np.where(ok, np.log(np.where(ok, prior, 1.0)) + (c_visit + n_k.max(1, keepdims=True)) * c_scale * qn, -np.inf)
    z = z - np.where(ok.any(1, keepdims=True), z.max(1, keepdims=True), 0.0)
    e = np.where(ok, np.exp(z), 0.0)
    total = e.sum(1, keepdims=True)
    return np.where(total > 0, e / np.maximum(total, 1e-300), onehot)
