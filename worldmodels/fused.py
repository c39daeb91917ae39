"""A fused view of the RSSM's prior step for planning: fewer, larger kernels per imagined step.

Planning over a learned model on a GPU is launch-bound: one PlaNet-sized prior step on 1,000
candidates is a few small matrix products and a dozen elementwise kernels, each far below what
the GPU could do in the time it takes to launch. `FusedRSSM` computes the same step with fewer
kernels (and optionally lower-precision matrix products); it changes nothing in the model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from .rssm import RSSMWorldModel
from .state import LatentState, WorldModelBase, check_actions, check_step

__all__ = ["FusedRSSM", "Precision", "prior_returns"]

_optimizer_steps = 0
"""Steps taken in this process by `torch.optim` optimizers of `nn.Parameter`s (a model's weights;
not the plain action tensors the gradient planners optimise). PyTorch's fused optimizers
(e.g. `Adam(fused=True)`) write the parameters in place without bumping their version counters,
so `FusedRSSM.refresh` cannot rely on those alone: every such step also counts here."""


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    if any(isinstance(p, torch.nn.Parameter) for group in optimizer.param_groups for p in group["params"]):
        _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)

Precision = Literal["fp32", "tf32", "bf16"]


class FusedRSSM(WorldModelBase):
    """The prior (imagination) step of an `RSSMWorldModel` with fused weights; a `WorldModel`.

    Same function as `model.imagine_step` / `model.rollout`, computed differently:

    - the GRU's input and hidden projections are one matrix product, `[x, h] @ W` with `W`
      `[hidden + deter, 4 * deter]` holding the reset/update gates' summed projections and the
      candidate's input and hidden parts side by side (PyTorch's `GRUCell` runs two products);
    - in `rollout`, the action part of the pre-GRU layer is one product over all H steps
      (`actions [N, H, A]` at once) and the per-step product sees only the stochastic state;
    - `precision="bf16"` runs the matrix products in bfloat16 (inputs rounded, results widened
      to fp32; in `prior_returns`, the CPU fused search's rollout, the reward head's too: on a CPU
      with AMX that is several times the fp32 rate, docs/benchmarks.md);
      `"tf32"` lets CUDA use TF32 tensor cores for them (no effect on CPU). The elementwise
      parts stay in fp32.

    Everything else (`observe`, `reward`, `decode`, `initial`, the action bounds, training)
    is the wrapped model's: attribute access falls through to it. The `nn.Module` calls that
    return the module (`eval`, `train`, `requires_grad_`, `to`, `float`, `double`, `cpu`,
    `cuda`) act on the wrapped model (the view shares it: `fused.to(torch.float64)` converts
    `model` too) and return this view, so `FusedRSSM(model).eval()` is still fused. The fused weights are copies,
    refreshed automatically when the model's parameters change (their version counters and the
    process's count of optimizer steps, which catches fused optimizers that write in place
    without bumping the counters, are checked on every `imagine_step`/`rollout` call, and by
    `refresh()`, which a captured CUDA graph's runner calls before each replay since a replay
    runs no Python; after writing through `param.data`, call `refresh(force=True)`).

    Accuracy: in fp32 the results equal the model's up to float rounding (about 1e-6
    relative; test). The effect of bf16/tf32 on plans is measured by
    `benchmarks/plan_speed.py --accuracy` (docs/benchmarks.md).

    Args:
        model: the `RSSMWorldModel` to view.
        precision: `"fp32"` (default), `"tf32"` or `"bf16"`.

    Raises:
        TypeError: `model` is not an `RSSMWorldModel`.
        ValueError: unknown `precision`.

    Source: the GRU of Cho et al. 2014 as PyTorch's `GRUCell` defines it
    (r = σ(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
    h' = (1 − z) ⊙ n + z ⊙ h); PlaNet's RSSM (Hafner et al. 2019, Appendix A).
    """

    def __init__(self, model: RSSMWorldModel, *, precision: Precision = "fp32") -> None:
        if not isinstance(model, RSSMWorldModel):
            raise TypeError(f"FusedRSSM: expected an RSSMWorldModel; got {type(model).__name__}")
        if precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"FusedRSSM: precision must be 'fp32', 'tf32' or 'bf16'; got {precision!r}")
        self.model = model
        self.precision = precision
        self._key: tuple | None = None
        self._w: dict[str, Tensor] = {}
        self.refresh()

    def __repr__(self) -> str:
        return f"FusedRSSM({type(self.model).__name__}, precision={self.precision!r})"

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "_w", "_key", "precision"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def feature_size(self) -> int:
        """F = D + S of the wrapped model."""
        return self.model.feature_size

    # ------------------------------------------------------------------ nn.Module calls that return the module
    def eval(self) -> "FusedRSSM":
        """`model.eval()`; returns this view (not the unfused model)."""
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> "FusedRSSM":
        """`model.train(mode)`; returns this view (not the unfused model)."""
        self.model.train(mode)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "FusedRSSM":
        """`model.requires_grad_(requires_grad)`; returns this view."""
        self.model.requires_grad_(requires_grad)
        return self

    def to(self, *args: Any, **kwargs: Any) -> "FusedRSSM":
        """`model.to(...)` (device and/or dtype; it converts the shared model in place), then the fused
        weights are rebuilt; returns this view.

        Raises:
            whatever `nn.Module.to` raises for its arguments.
        """
        self.model.to(*args, **kwargs)
        self.refresh(force=True)
        return self

    def float(self) -> "FusedRSSM":
        """`model.float()`; returns this view."""
        return self.to(torch.float32)

    def double(self) -> "FusedRSSM":
        """`model.double()`; returns this view."""
        return self.to(torch.float64)

    def cpu(self) -> "FusedRSSM":
        """`model.cpu()`; returns this view."""
        return self.to("cpu")

    def cuda(self, device: Any = None) -> "FusedRSSM":
        """`model.cuda(device)`; returns this view."""
        self.model.cuda(device)
        self.refresh(force=True)
        return self

    # ------------------------------------------------------------------ fused weights
    def _params(self) -> list[Tensor]:
        m = self.model
        return [
            m.pre_gru.weight, m.pre_gru.bias, m.gru.weight_ih, m.gru.weight_hh, m.gru.bias_ih, m.gru.bias_hh,
            m.prior_hidden.weight, m.prior_hidden.bias, m.prior_out.weight, m.prior_out.bias,
            *(p for layer in _reward_layers(m) for p in (layer.weight, layer.bias)),
        ]

    def refresh(self, force: bool = False) -> bool:
        """Rebuild the fused weights if the model's parameters changed (in place, so tensors a
        captured graph reads stay valid). Returns True if they were rebuilt.

        A change is seen through the parameters' version counters, their storage, and the process's
        count of `torch.optim` steps over `nn.Parameter`s (fused optimizers, such as
        `Adam(fused=True)`, write in place without bumping the version counters). Writes that
        bypass both, e.g. through `param.data`, need `force=True`."""
        params = self._params()
        key = (_optimizer_steps, tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in params))
        if key == self._key and not force:
            return False
        m, c = self.model, self.model.config
        d, s = c.deter, c.stoch
        mm_dtype = torch.bfloat16 if self.precision == "bf16" else params[0].dtype
        with torch.no_grad():
            w_ih, w_hh = m.gru.weight_ih, m.gru.weight_hh  # [3D, in], [3D, D]: rows r, z, n
            b_ih, b_hh = m.gru.bias_ih, m.gru.bias_hh
            zeros_i = torch.zeros(d, w_ih.shape[1], device=w_ih.device, dtype=w_ih.dtype)
            zeros_h = torch.zeros(d, d, device=w_hh.device, dtype=w_hh.dtype)
            top = torch.cat([w_ih[: 2 * d], w_ih[2 * d:], zeros_i])  # input part: r, z, n_in, 0
            bottom = torch.cat([w_hh[: 2 * d], zeros_h, w_hh[2 * d:]])  # hidden part: r, z, 0, n_h
            new = {
                "gru_w": torch.cat([top, bottom], dim=1).t().contiguous().to(mm_dtype),  # [in + D, 4D]
                "gru_b": torch.cat([b_ih[: 2 * d] + b_hh[: 2 * d], b_ih[2 * d:], b_hh[2 * d:]]),
                "pre_s": m.pre_gru.weight[:, :s].t().contiguous().to(mm_dtype),  # [S, hidden]
                "pre_a": m.pre_gru.weight[:, s:].t().contiguous().to(mm_dtype),  # [A, hidden]
                "pre_b": m.pre_gru.bias.clone(),
                "ph_w": m.prior_hidden.weight.t().contiguous().to(mm_dtype),
                "ph_b": m.prior_hidden.bias.clone(),
                "po_w": m.prior_out.weight.t().contiguous().to(mm_dtype),
                "po_b": m.prior_out.bias.clone(),
            }
            # for `prior_returns` (the CPU path, where arithmetic, not launches, is the cost): the GRU's
            # two products without the zero blocks of gru_w, and the reward head (bf16 too with "bf16")
            new["gru_wi"] = w_ih.t().contiguous().to(mm_dtype)  # [in, 3D]
            new["gru_wh"] = w_hh.t().contiguous().to(mm_dtype)  # [D, 3D]
            new["gru_bi"], new["gru_bh"] = b_ih.clone(), b_hh.clone()
            for i, layer in enumerate(_reward_layers(m)):
                new[f"r{i}_w"] = layer.weight.t().contiguous().to(mm_dtype)
                new[f"r{i}_b"] = layer.bias.clone()
            # `.t().contiguous()` of a [1, n] weight is the parameter itself (already contiguous):
            # copy it, or the in-place refresh below would write into the parameter and bump its
            # version counter, so every later call would rebuild again
            storages = {p.untyped_storage().data_ptr() for p in params}
            new = {k: v.clone() if v.untyped_storage().data_ptr() in storages else v for k, v in new.items()}
            if self._w and all(self._w[k].shape == v.shape and self._w[k].dtype == v.dtype
                               and self._w[k].device == v.device for k, v in new.items()):
                for k, v in new.items():
                    self._w[k].copy_(v)
            else:
                self._w = new
        self._key = key
        return True

    @contextlib.contextmanager
    def _matmul_precision(self) -> Iterator[None]:
        if self.precision != "tf32":
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    # ------------------------------------------------------------------ the step
    def _step(self, stoch: Tensor, deter: Tensor, action_part: Tensor, eps: Tensor | None) -> tuple[Tensor, Tensor]:
        w, c = self._w, self.model.config
        d = c.deter
        x = F.elu(action_part + _matmul(stoch, w["pre_s"]))
        g = _matmul(torch.cat([x, deter], dim=-1), w["gru_w"]) + w["gru_b"]
        rz = torch.sigmoid(g[:, : 2 * d])
        r, z = rz[:, :d], rz[:, d:]
        n = torch.tanh(g[:, 2 * d: 3 * d] + r * g[:, 3 * d:])
        deter = (1.0 - z) * n + z * deter
        out = _matmul(F.elu(_matmul(deter, w["ph_w"]) + w["ph_b"]), w["po_w"]) + w["po_b"]
        mean, raw = out.chunk(2, dim=-1)
        if eps is None:
            return deter, mean
        return deter, mean + (F.softplus(raw) + c.min_std) * eps

    def _eps(self, like: Tensor, generator: torch.Generator | None, sample: bool) -> Tensor | None:
        if not sample:
            return None
        return torch.randn(like.shape[0], self.model.config.stoch, generator=generator, device=like.device, dtype=like.dtype)

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> LatentState:
        """Prior step, as `RSSMWorldModel.imagine_step` (same random numbers from `generator`):
        `state [N]`, `action [N, A]` -> next belief `[N]`.

        Raises:
            TypeError / ValueError: as `RSSMWorldModel.imagine_step` (`check_step`).
        """
        self.model._check_step(state, action, "imagine_step")
        self.refresh()
        with self._matmul_precision():
            action_part = _matmul(action, self._w["pre_a"]) + self._w["pre_b"]
            deter, stoch = self._step(state.stoch, state.deter, action_part, self._eps(action, generator, sample))
        return LatentState(deter, stoch)

    def rollout(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[LatentState, LatentState]:
        """H prior steps, as `RSSMWorldModel.rollout`: `state [N]`, `actions [N, H, A]` ->
        `(visited [N * H] (row n * H + t), final [N])`, with the same random numbers drawn in the
        same order.

        Raises:
            TypeError: `state` is not a `LatentState` or `actions` not a tensor.
            ValueError: `actions` not 3-D, H = 0, or a size, dtype or device of `state` or
                `actions` other than the model's (`check_step`; metadata only, no host sync).
        """
        check_actions("FusedRSSM.rollout", actions)
        m, c = self.model, self.model.config
        check_step("FusedRSSM.rollout", state, actions, deter=c.deter, stoch=c.stoch, action_dim=m.action_dim,
                   dtype=m.pre_gru.weight.dtype, device=m.pre_gru.weight.device, horizon=actions.shape[1])
        self.refresh()
        n, h, _ = actions.shape
        deter, stoch = state.deter, state.stoch
        deters, stochs = [], []
        with self._matmul_precision():
            action_part = (_matmul(actions.reshape(n * h, -1), self._w["pre_a"]) + self._w["pre_b"]).reshape(n, h, -1)
            for t in range(h):
                deter, stoch = self._step(stoch, deter, action_part[:, t], self._eps(actions, generator, sample))
                deters.append(deter)
                stochs.append(stoch)
        visited = LatentState(torch.stack(deters, 1).flatten(0, 1), torch.stack(stochs, 1).flatten(0, 1))
        return visited, LatentState(deter, stoch)


def _matmul(x: Tensor, weight: Tensor) -> Tensor:
    """`x @ weight`; with bf16 weights, x rounded to bf16, the product in bf16 (oneDNN; AMX or
    AVX512-BF16 where the CPU has them) and its result widened to fp32."""
    if weight.dtype == torch.bfloat16:
        return (x.to(torch.bfloat16) @ weight).float()
    return x @ weight


BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED = True
"""Under `torch.compile`, `_affine` adds the bias after the product, in the elementwise kernel that
reads the product anyway. Inductor turns a plain `bias + x @ weight` into an `addmm` on the CPU,
and that first copies the bias into the whole output (one more pass over `[N, 3D]`). Writing the
sum as `x @ weight - (-bias)` keeps it out of that rewrite. Measured: 7-16 % faster per compiled CEM
iteration at PlaNet's and the demo's sizes, on one and two threads (docs/benchmarks.md). CPU only
(on CUDA inductor already keeps such biases out of the product). False restores the `addmm`, for
comparison."""


def _affine(bias: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """`bias + x @ weight` in fp32: eagerly with fp32 weights one `addmm` (the bias inside the
    product, as `nn.Linear` does); under `torch.compile` the product, then the bias in the
    elementwise kernel that follows (`BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED`); with bf16 weights
    `_matmul`, then the fp32 bias."""
    if weight.dtype == torch.bfloat16:
        return bias + _matmul(x, weight)
    if BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED and x.device.type == "cpu" and torch.compiler.is_compiling():
        return torch.sub(x @ weight, -bias)  # see BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED
    return torch.addmm(bias, x, weight)


def _reward_layers(model: RSSMWorldModel) -> list[torch.nn.Linear]:
    """The linear layers of the model's reward head (an `MLP`: Linear, ELU, ..., Linear)."""
    return [layer for layer in model.reward_head.net if isinstance(layer, torch.nn.Linear)]


def prior_returns(
    w: dict[str, Tensor], deter: Tensor, stoch: Tensor, actions: Tensor, eps: Tensor, *, min_std: float,
    discount: float = 1.0,
) -> Tensor:
    """Returns of H imagined prior steps under the learned reward head, with the noise given.

    A pure function of tensors (no generator, no Python state), so that `torch.compile` can fuse
    it whole: on the CPU inductor turns the elementwise parts of all H steps (ELU, the GRU's gates,
    softplus, the sample, the reward head's ELUs) into a few C++/OpenMP loops around the matrix
    products. It is what `Objective(model).returns(state, actions, generator=g)` computes for the
    default objective (the learned reward, no value, no terminal term) when `eps[t]` holds the
    `randn(N, S)` that the model's `rollout` would draw at step t: equal up to float rounding
    (test: tests/test_fastpath.py).

    Args:
        w: `FusedRSSM(model)._w` (after `refresh()`): the fused GRU, prior and reward head
            weights, fp32, or bf16 for `FusedRSSM(model, precision="bf16")`: then every matrix
            product, the reward head's included, takes bf16 inputs (rounded) and its result is
            widened to fp32; the elementwise work (gates, sample, sums) stays fp32.
        deter: `[N, D]`, stoch: `[N, S]` start beliefs.
        actions: `[N, H, A]` action sequences.
        eps: `[H, N, S]` standard normal noise of the stochastic states, step-major.
        min_std: the model's `config.min_std`.
        discount: γ of the objective: the return is sum_t γ^t r_t.

    Returns:
        `[N]` returns (non-finite entries left as they are).

    Source: PlaNet's RSSM prior and return (Hafner et al. 2019, Sec. 3 and Appendix A); the GRU
    as in `FusedRSSM`.
    """
    n, h, a = actions.shape
    d = deter.shape[1]
    action_part = _affine(w["pre_b"], actions.transpose(0, 1).reshape(h * n, a), w["pre_a"]).reshape(h, n, -1)
    feats = []
    for t in range(h):
        x = F.elu(_affine(action_part[t], stoch, w["pre_s"]))
        gi = _affine(w["gru_bi"], x, w["gru_wi"])  # [N, 3D]: r, z, n parts of the input
        gh = _affine(w["gru_bh"], deter, w["gru_wh"])  # [N, 3D]: r, z, n parts of the hidden state
        rz = torch.sigmoid(gi[:, : 2 * d] + gh[:, : 2 * d])
        cand = torch.tanh(gi[:, 2 * d:] + rz[:, :d] * gh[:, 2 * d:])
        z = rz[:, d:]
        deter = (1.0 - z) * cand + z * deter
        out = _affine(w["po_b"], F.elu(_affine(w["ph_b"], deter, w["ph_w"])), w["po_w"])
        mean, raw = out.chunk(2, dim=-1)
        stoch = mean + (F.softplus(raw) + min_std) * eps[t]
        feats.append(torch.cat([deter, stoch], dim=-1))
    x = torch.cat(feats, dim=0)  # [H * N, D + S], row t * N + n
    x = F.elu(_affine(w["r0_b"], x, w["r0_w"]))
    x = F.elu(_affine(w["r1_b"], x, w["r1_w"]))
    r = _affine(w["r2_b"], x, w["r2_w"]).reshape(h, n)
    if discount == 1.0:
        return r.sum(dim=0)
    weights = discount ** torch.arange(h, device=r.device, dtype=r.dtype)
    return (r * weights[:, None]).sum(dim=0)
