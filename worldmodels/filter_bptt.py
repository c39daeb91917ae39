"""The RSSM's posterior recursion over a training batch, with a hand-written backward through time.

`RSSMWorldModel._filter` runs T sequential steps of small matrix products (PlaNet's B = 50 chunks
of T = 50 steps; the demo's 32 x 32). Under autograd each step records some thirty nodes, and
the backward replays them one by one, each with its own weight-gradient product and
accumulation. On a CPU that bookkeeping, not the arithmetic, is most of a model update.

`PosteriorFilter` computes the same recursion without recording a graph and differentiates it
by hand (backpropagation through time, Werbos 1990): the reverse loop computes only what must
be sequential (the gradients of the carried belief), and the weight gradients of all T steps
are then a handful of `[T*B, .] x [T*B, .]` products. The numbers equal autograd's to float
rounding (`tests/test_filter_bptt.py` checks both against each other and with `gradcheck`).

The step, for each t (`keep_t` is 0 where an episode starts, which resets the belief):

    s_in = z_{t-1} keep_t,  h_in = h_{t-1} keep_t
    x    = elu(a_t + s_in W_s^T)                     (the action's part a_t precomputed)
    h_t  = GRUCell(x, h_in)                          (PyTorch's gate order r, z, n)
    y    = elu(e_t + h_t W_d^T)                      (the embedding's part e_t precomputed)
    mean, raw = split(y W_q^T + b_q);  std = softplus(raw) + min_std
    z_t  = mean + std eps_t
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["PosteriorFilter", "posterior_filter"]


_STEPS = ("s_in", "x", "h_in", "rz", "n", "ghn", "h", "y", "raw")
"""The per-step intermediates the backward reads, in `save_for_backward` order."""


def _elu_slope(y: Tensor) -> Tensor:
    """d elu(u) / du from the output y = elu(u) (alpha 1): 1 where y > 0, else exp(u) = y + 1,
    that is min(y, 0) + 1 (two fast kernels; `torch.where` is ten times slower on the CPU)."""
    return y.clamp_max(0) + 1


class PosteriorFilter(torch.autograd.Function):
    """The posterior recursion of `RSSMWorldModel._filter` as one autograd node.

    Inputs: `action_part [B, T, Hd]` and `embed_part [B, T, Hd]` (the pre-GRU layer's action
    part with its bias, the posterior layer's embedding part with its bias), `keep [B, T, 1]`
    (0 at episode starts), `eps [T, B, S]` (the samples' noise), the weights `w_s [Hd, S]`,
    `w_ih [3D, Hd]`, `b_ih [3D]`, `w_hh [3D, D]`, `b_hh [3D]`, `w_d [Hd, D]`, `w_q [2S, Hd]`,
    `b_q [2S]`, and the float `min_std`.

    Returns `(deter [B, T, D], stoch [B, T, S], mean [B, T, S], std [B, T, S])`. Differentiable
    once in every tensor input but `keep` and `eps` (a double backward raises a RuntimeError, as
    do inputs whose shapes disagree, from the products).
    Every step's intermediates are kept for the backward: about 12 `[T, B, max(D, Hd)]` tensors.

    Source: the RSSM of Hafner et al. 2019 (PlaNet); the GRU of Cho et al. 2014 in PyTorch's
    `nn.GRUCell` form; backpropagation through time (Werbos 1990).
    """

    @staticmethod
    def forward(ctx, action_part, embed_part, keep, eps, w_s, w_ih, b_ih, w_hh, b_hh, w_d, w_q, b_q, min_std):
        b, t_len, _ = action_part.shape
        d = w_hh.shape[1]
        s = w_s.shape[1]
        h = action_part.new_zeros(b, d)
        z = action_part.new_zeros(b, s)
        w_s_t, w_ih_t, w_hh_t, w_d_t, w_q_t = w_s.t(), w_ih.t(), w_hh.t(), w_d.t(), w_q.t()
        keeps = keep.unbind(1)
        saved: dict[str, list[Tensor]] = {k: [] for k in ("s_in", "x", "h_in", "rz", "n", "ghn", "h", "y", "raw", "z", "mean", "std")}
        for k, a_t, e_t, eps_t in zip(keeps, action_part.unbind(1), embed_part.unbind(1), eps.unbind(0)):
            s_in = z * k
            x = F.elu(torch.addmm(a_t, s_in, w_s_t))
            h_in = h * k
            gi = torch.addmm(b_ih, x, w_ih_t)
            gh = torch.addmm(b_hh, h_in, w_hh_t)
            rz = torch.sigmoid(gi[:, : 2 * d] + gh[:, : 2 * d])
            ghn = gh[:, 2 * d:]
            n = torch.tanh(torch.addcmul(gi[:, 2 * d:], rz[:, :d], ghn))
            h = torch.addcmul(n, rz[:, d:], h_in - n)  # (1 - z) n + z h_in
            y = F.elu(torch.addmm(e_t, h, w_d_t))
            o = torch.addmm(b_q, y, w_q_t)
            mean, raw = o[:, :s], o[:, s:]
            std = F.softplus(raw) + min_std
            z = torch.addcmul(mean, std, eps_t)
            for key, v in (("s_in", s_in), ("x", x), ("h_in", h_in), ("rz", rz), ("n", n), ("ghn", ghn), ("h", h),
                           ("y", y), ("raw", raw), ("z", z), ("mean", mean), ("std", std)):
                saved[key].append(v)
        outs = tuple(torch.stack(saved[key], 1) for key in ("h", "z", "mean", "std"))
        # everything the backward reads goes through save_for_backward (freed after the backward,
        # version-checked, seen by saved-tensor hooks); the steps' intermediates stacked [T, B, .]
        steps = [torch.stack(saved[key]) for key in _STEPS]
        ctx.save_for_backward(w_s, w_ih, w_hh, w_d, w_q, keep, eps, *steps)
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, g_h, g_z, g_mean, g_std):
        w_s, w_ih, w_hh, w_d, w_q, keep, eps, *steps = ctx.saved_tensors
        st = dict(zip(_STEPS, steps))
        t_len, b, d = st["h"].shape
        s = w_s.shape[1]
        dtype, device = st["h"].dtype, st["h"].device

        # autograd materialises the gradients of unused outputs as zeros, so none is None here;
        # each as T contiguous [B, .] steps (faster kernels than strided slices)
        g_h, g_z, g_mean, g_std = (g.transpose(0, 1).contiguous().unbind(0) for g in (g_h, g_z, g_mean, g_std))
        # per-step factors, for all steps at once
        rz = st["rz"]
        r, zg = rz[..., :d].contiguous(), rz[..., d:].contiguous()
        n = st["n"]
        rz_slope = (rz * (1 - rz)).unbind(0)  # sigmoid'
        dn_factor = ((1 - zg) * (1 - n * n)).unbind(0)  # d h / d pre_n
        h_in_minus_n = (st["h_in"] - n).unbind(0)  # d h / d z
        x_slope = _elu_slope(st["x"]).unbind(0)
        y_slope = _elu_slope(st["y"]).unbind(0)
        sig = torch.sigmoid(st["raw"]).unbind(0)  # softplus'
        ghn = st["ghn"].unbind(0)
        r, zg = r.unbind(0), zg.unbind(0)
        keeps = keep.transpose(0, 1).contiguous().unbind(0)
        du = torch.empty(t_len, b, w_s.shape[0], dtype=dtype, device=device)
        dgi = torch.empty(t_len, b, 3 * d, dtype=dtype, device=device)
        dgh = torch.empty(t_len, b, 3 * d, dtype=dtype, device=device)
        dv = torch.empty(t_len, b, w_d.shape[0], dtype=dtype, device=device)
        do = torch.empty(t_len, b, 2 * s, dtype=dtype, device=device)
        carry_h = torch.zeros(b, d, dtype=dtype, device=device)
        carry_z = torch.zeros(b, s, dtype=dtype, device=device)
        for t in range(t_len - 1, -1, -1):
            dz_t = g_z[t] + carry_z
            torch.add(g_mean[t], dz_t, out=do[t, :, :s])
            torch.mul(torch.addcmul(g_std[t], dz_t, eps[t]), sig[t], out=do[t, :, s:])
            torch.mul(do[t] @ w_q, y_slope[t], out=dv[t])
            dh = torch.addmm(g_h[t] + carry_h, dv[t], w_d)
            dpre_n = dh * dn_factor[t]
            torch.mul(torch.cat([dpre_n * ghn[t], dh * h_in_minus_n[t]], 1), rz_slope[t], out=dgi[t, :, : 2 * d])
            dgi[t, :, 2 * d:] = dpre_n
            dgh[t, :, : 2 * d] = dgi[t, :, : 2 * d]
            torch.mul(dpre_n, r[t], out=dgh[t, :, 2 * d:])
            dh_in = torch.addmm(dh * zg[t], dgh[t], w_hh)
            torch.mul(dgi[t] @ w_ih, x_slope[t], out=du[t])
            carry_h = dh_in * keeps[t]
            carry_z = (du[t] @ w_s) * keeps[t]
        need = ctx.needs_input_grad

        def flat(x: Tensor) -> Tensor:
            return x.reshape(t_len * b, x.shape[-1])

        def weight(g: Tensor, x: Tensor, i: int) -> Tensor | None:
            return flat(g).t() @ flat(x) if need[i] else None

        def bias(g: Tensor, i: int) -> Tensor | None:
            return flat(g).sum(0) if need[i] else None

        return (
            du.transpose(0, 1) if need[0] else None,
            dv.transpose(0, 1) if need[1] else None,
            None, None,
            weight(du, st["s_in"], 4),
            weight(dgi, st["x"], 5), bias(dgi, 6),
            weight(dgh, st["h_in"], 7), bias(dgh, 8),
            weight(dv, st["h"], 9),
            weight(do, st["y"], 10), bias(do, 11),
            None,
        )


def posterior_filter(action_part: Tensor, embed_part: Tensor, keep: Tensor, eps: Tensor, w_s: Tensor,
                     gru: torch.nn.GRUCell, w_d: Tensor, post_out: torch.nn.Linear, min_std: float
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`PosteriorFilter.apply` with the GRU cell's and the posterior output layer's parameters.

    Args:
        action_part: `[B, T, Hd]`; embed_part: `[B, T, Hd]`; keep: `[B, T, 1]` (0 at episode
            starts); eps: `[T, B, S]`; w_s: `[Hd, S]`, the pre-GRU layer's stochastic-state
            columns; gru: the `nn.GRUCell(Hd, D)`; w_d: `[Hd, D]`, the posterior layer's
            deterministic-state columns; post_out: the `nn.Linear(Hd, 2S)` giving mean and raw std;
            min_std: the std's floor.

    Returns:
        `(deter, stoch, mean, std)`, each `[B, T, .]`, as `PosteriorFilter`.

    Raises:
        RuntimeError: from the matrix products, when the shapes disagree.

    Source: PlaNet's posterior (Hafner et al. 2019, Appendix A); backpropagation through time
    (Werbos 1990).
    """
    return PosteriorFilter.apply(action_part, embed_part, keep, eps, w_s, gru.weight_ih, gru.bias_ih,
                                 gru.weight_hh, gru.bias_hh, w_d, post_out.weight, post_out.bias, min_std)
