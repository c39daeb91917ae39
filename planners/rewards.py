"""Reward terms written in plain PyTorch: "my dynamics are learned, my reward is known".

A user writes a function of the decoded physical quantities (or of the latent belief), marks it
with `@reward`, and plans with it beside or instead of the model's learned reward head:

```python
import latentplan as lp

@lp.reward(inputs="decoded")
def upright(obs, action, ctx):          # obs: dict of [N, ...] tensors decoded from the latent
    return obs["pole_cos"] - 0.1 * (obs["cart_x"] - ctx["target_x"]).abs()

objective = lp.Objective(model, rewards=[upright, 0.5 * lp.learned_reward()],
                         value=critic, context={"target_x": 0.5})
```

Shapes. Planners evaluate `N = B * J` rows at once (B environments, J candidate sequences per
environment), row `b * J + j` belonging to environment `b` (the layout of `LatentState.expand`).
A reward returns one value per row: `[N]`, floating point, on the action's device.

Terms (`Reward` objects) compose: `a + b`, `a - b`, `-a`, `2.0 * a`, `a * 2.0`, `a / 2.0` and
`sum([a, b, c])` build new terms; a composite is differentiable only if all its parts are, and
its `name` shows the expression (`"upright + 0.5*learned_reward"`).

A term needs the model (to decode) and the per-call context before it can be evaluated:
`Objective` binds every `Reward` it is given to one `RewardContext` (model, context, B), which
gives a `BoundReward` with the internal signature `(next_state [N], action [N, A]) -> [N]`.
Plain callables with that internal signature are used unchanged.

Episode ends: `@continuation` (`reward(stage="continuation")`) marks a function of the same form
that returns the probability in [0, 1] (or a bool flag) that the episode continues after the step;
it goes in `Objective(continuation=...)`, composes with nothing, and its output is checked by
`check_continuation_output`.

Pixel models: the training loop gives them small probe heads that decode the env's named
physical quantities from the latent (`RSSMConfig.probe_dim`, targets from the env's state), so a
pixel model's `decode` serves `obs["cart_x"]` etc. too, and `inputs="decoded"` terms work there
without running the image decoder.

Sources: docs/rewards.md; the conformance checker follows
Gymnasium's `gymnasium.utils.env_checker.check_env`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterator, Literal, Mapping, overload

import numpy as np
import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState, WorldModel

from .base import callable_name

__all__ = [
    "BoundReward", "NoGradientError", "Reward", "RewardContext", "RewardReport", "Shared", "check_continuation_output",
    "check_reward", "check_reward_gradient", "check_reward_output", "continuation", "learned_reward", "reward", "shared",
]

Inputs = Literal["decoded", "latent"]
_INPUTS = ("decoded", "latent")
Stage = Literal["arrival", "transition", "terminal", "continuation"]
_STAGES = ("arrival", "transition", "terminal", "continuation")


@dataclass(frozen=True)
class Shared:
    """A context value shared by all environments, passed to reward functions as it is.

    A plain context tensor with a leading dimension is per environment (`[B, ...]` or `[1, ...]`,
    expanded to `[N, ...]` rows; see `RewardContext`). A matrix such as a cost weight `Q` `[n, n]`
    is one value for every row: wrap it, `context={"Q": lp.shared(Q)}`, and the function receives
    `ctx["Q"]` `[n, n]` unchanged in shape (moved to the evaluation's device; a floating tensor
    cast to the evaluated state's dtype). NumPy arrays are converted with `torch.as_tensor`;
    other values pass through.

    Attributes:
        value: the wrapped value.
    """

    value: Any


def shared(value: Any) -> Shared:
    """Mark a context value as shared by all environments (`Shared(value)`); see `Shared`.

    Args:
        value: any value, e.g. a matrix `Q [n, n]` or a vector `[D]` that every environment uses:
            it reaches the reward functions with its own shape (not expanded to `[N, ...]`, not
            checked against B); a floating tensor is cast to the evaluated state's dtype.

    Returns:
        `Shared(value)`, for `Objective(context={name: ...})`.

    Raises:
        Nothing here (any value is accepted; a NumPy array becomes a tensor in `RewardContext`).
    """
    return Shared(value)


# --------------------------------------------------------------------------- output checks
def check_reward_output(value: object, name: str, n: int, device: torch.device) -> Tensor:
    """Check what a reward term returned: a floating `[N]` tensor on the action's device.

    Called on every evaluation (attribute checks only: no host synchronisation). NaN and inf are
    not errors: they propagate into the return, which planners rank as `-inf`.

    Args:
        value: the term's output.
        name: the term's name, put in the message.
        n: N, the number of rows evaluated.
        device: the device of the action (and so of the evaluation).

    Returns:
        `value`, unchanged.

    Raises:
        TypeError: `value` is not a tensor, or has a non-floating dtype (the only problem).
        ValueError: `value` is not `[N]` or lives on another device (other problems are listed
            in the same message), e.g. "reward 'upright' must return a [N=1000] floating tensor
            on cpu; returned shape (1000, 1); reduce or squeeze the last dimension (e.g. .sum(-1))"
            (an `[N, N]` output's message names the `[N]` against `[N, 1]` broadcast that
            usually makes it).
    """
    if not isinstance(value, Tensor):
        raise TypeError(
            f"reward {name!r} must return a [N={n}] floating tensor on {device}; "
            f"returned a {type(value).__name__}"
        )
    bad_shape = value.shape != (n,)
    bad_device = value.device != device
    bad_dtype = not value.is_floating_point()
    if not (bad_shape or bad_device or bad_dtype):
        return value
    problems = []
    if bad_shape:
        problems.append(f"shape {tuple(value.shape)}")
    if bad_dtype:
        problems.append(f"dtype {value.dtype}")
    if bad_device:
        problems.append(f"device {value.device}")
    error = ValueError if bad_shape or bad_device else TypeError
    hint = ""
    if value.dim() == 2 and value.shape[0] == n and value.shape[1] in (1, n):
        hint = ("; an [N, N] result comes from broadcasting an [N] tensor against an [N, 1] one (a context value "
                "given as [B, 1] or [1, 1] arrives as [N, 1]: give a per-environment scalar as [B])"
                if value.shape[1] == n and n > 1 else "; reduce or squeeze the last dimension (e.g. .sum(-1))")
    raise error(
        f"reward {name!r} must return a [N={n}] floating tensor on {device}; returned " + ", ".join(problems) + hint
    )


class NoGradientError(ValueError):
    """Raised by `check_reward_gradient`: a term marked differentiable returned an output without
    gradient while gradients are taken. A `ValueError`."""


def check_reward_gradient(
    value: Tensor, name: str, inputs: "tuple[LatentState | Tensor | None, ...]", *, kind: str = "reward"
) -> None:
    """Check that a term marked differentiable kept its output in the autograd graph.

    Gradient planners (`GradientPlanner`, the CEM polish and gradient refinement, `ILQR`, policy
    learning through imagined rollouts) differentiate the return with respect to the actions.
    A term that detaches its output (`.detach()`, `torch.no_grad()`, NumPy, `.item()`, a
    constant) gives them a zero gradient and they would silently return the sequence they
    started from. The check runs only while gradients are being taken: grad mode on and every
    input the term was given requiring grad (for a `LatentState`, either of its tensors); then
    the output must require grad too. Attribute checks only (no host synchronisation); skipped
    while a CUDA graph is captured or `torch.compile` traces.

    Args:
        value: the term's `[N]` output (already checked by `check_reward_output`).
        name: the term's name, put in the message.
        inputs: what the term read: the states (`LatentState`) and the action (`None` entries,
            e.g. the action of a terminal term, are skipped).
        kind: `"reward"` or `"continuation"`, for the message.

    Raises:
        NoGradientError (a ValueError): grad mode is on, every input requires grad and `value`
            does not; the message names the term and how to fix it.
    """
    if value.requires_grad or not torch.is_grad_enabled():
        return
    given = [x for x in inputs if x is not None]
    if not given:
        return
    for x in given:
        if isinstance(x, LatentState):
            if not (x.deter.requires_grad or x.stoch.requires_grad):
                return
        elif not (isinstance(x, Tensor) and x.requires_grad):
            return
    if _capturing(value.device):
        return
    raise NoGradientError(
        f"{kind} {name!r} is marked differentiable but its output carries no gradient (it was detached, computed "
        "under torch.no_grad(), through NumPy or .item(), or is a constant), while a gradient-based planner "
        "differentiates it: the planner would follow a zero gradient and return the sequence it started from. "
        f"Keep the computation in torch, or mark it @lp.{'continuation' if kind == 'continuation' else 'reward'}"
        "(..., differentiable=False) (sampling planners only); a constant term changes no plan: drop it"
    )


def _watch_versions(tensors: "list[Tensor]") -> tuple[int, ...] | None:
    """The in-place modification counters of `tensors`; None if one has none (an inference tensor,
    made under `torch.inference_mode`): the in-place check is then skipped."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


def _watched_inputs(
    state: LatentState, action: Tensor | None, prev: LatentState | None, first: Any, before: Any, ctx: dict[str, Any],
) -> list[Tensor]:
    """The tensors a user function is given: the states (and their decoded quantities, dicts), the
    action and the context values (`_watched_labels` names them, in the same order). Kept lean: it
    runs at every evaluation of a term."""
    out = [state.deter, state.stoch]
    if type(first) is dict:
        out += [v for v in first.values() if isinstance(v, Tensor)]
    if prev is not None:
        out += [prev.deter, prev.stoch]
        if type(before) is dict:
            out += [v for v in before.values() if isinstance(v, Tensor)]
    if action is not None:
        out.append(action)
    out += [v for v in ctx.values() if isinstance(v, Tensor)]
    return out


def _watched_labels(first: Any, prev: LatentState | None, before: Any, action: Tensor | None,
                    ctx: dict[str, Any]) -> list[str]:
    """The names of `_watched_inputs`' tensors, in its order (for the message)."""
    out = ["next_state.deter", "next_state.stoch"]
    if type(first) is dict:
        out += [f"obs[{k!r}]" for k, v in first.items() if isinstance(v, Tensor)]
    if prev is not None:
        out += ["prev_state.deter", "prev_state.stoch"]
        if type(before) is dict:
            out += [f"prev_obs[{k!r}]" for k, v in before.items() if isinstance(v, Tensor)]
    if action is not None:
        out.append("action")
    out += [f"ctx[{k!r}]" for k, v in ctx.items() if isinstance(v, Tensor)]
    return out


def _capturing(device: torch.device) -> bool:
    """`_recording()` for an evaluation on `device`: a CUDA graph is captured only on a CUDA device
    (this skips `torch.cuda.is_available()`, the costly part, on the CPU)."""
    if torch.compiler.is_compiling():
        return True
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_continuation_output(value: object, name: str, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Check what a continuation term returned and cast it: a `[N]` bool or floating tensor on the
    action's device with values in [0, 1] (the probability that the episode continues).

    A bool tensor (True = not done, MuZero-style terminal flags negated) becomes 1.0 / 0.0. The
    range check reads the values back (one host synchronisation per call); it is skipped while a
    CUDA graph is captured or `torch.compile` traces (`_recording`), where nothing may be read
    back. NaN is not an error: like a NaN reward it propagates into the return, which planners
    rank as `-inf`.

    Args:
        value: the term's output.
        name: the term's name, put in the message.
        n: N, the number of rows evaluated.
        device: the device of the action (and so of the evaluation).
        dtype: the evaluated state's floating dtype; the result is cast to it.

    Returns:
        `[N]` the continuation probabilities in `dtype`.

    Raises:
        TypeError: `value` is not a tensor, or is neither bool nor floating (e.g. int64).
        ValueError: `value` is not `[N]`, lives on another device, or has values outside [0, 1]
            (the message names the term and the smallest / largest value).
    """
    where = (f"continuation {name!r} must return a [N={n}] float tensor in [0, 1] (or a bool tensor, "
             f"True = continues) on {device}")
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}; returned a {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype == torch.bool):
        raise TypeError(f"{where}; returned dtype {value.dtype}")
    if value.shape != (n,) or value.device != device:
        raise ValueError(f"{where}; returned shape {tuple(value.shape)} on {value.device}")
    value = value.to(dtype) if dtype.is_floating_point else value.float()
    if not _recording() and bool(((value < 0.0) | (value > 1.0)).any()):
        lo, hi = torch.aminmax(value.detach().nan_to_num(0.5))
        raise ValueError(f"{where}; returned values in [{float(lo):.4g}, {float(hi):.4g}]")
    return value


# --------------------------------------------------------------------------- context
def _recording() -> bool:
    """True while a CUDA graph is being captured or `torch.compile` is tracing: then nothing may
    be served from a Python-side cache, since a replay (or the compiled code) runs no Python and
    must recompute it from the static buffers."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _versions(*tensors: Tensor) -> tuple[int, ...] | None:
    """In-place modification counters of `tensors`; None if one cannot tell (inference tensors),
    or while a graph is recorded (`_recording`): None disables the caches that use them."""
    if _recording() or any(t.is_inference() for t in tensors):
        return None
    return tuple(t._version for t in tensors)


_EXPANDED_CACHE = 8
"""How many `(N, device, dtype)` expansions a `RewardContext` keeps (the oldest is dropped first)."""


class RewardContext:
    """What reward terms are evaluated against in one plan call: the model, the context, B.

    Context values may be Python scalars (passed as they are), 0-dim tensors (moved to the
    evaluation's device), or tensors with a leading dimension, which are per environment:
    `[B, ...]` (one entry per environment) or `[1, ...]` (shared by all). At evaluation over
    `N = B * J` rows every tensor with a leading dimension reaches the user's function as
    `[N, ...]`: a `[B, ...]` value is repeated with `repeat_interleave(N // B)` (row `b * J + j`
    sees environment b's entry), a `[1, ...]` value is expanded (a broadcast view). A per-env
    scalar is therefore given as `[B]` and arrives as `[N]`, ready to combine with a squeezed
    named slice such as `obs["cart_x"]`. A vector shared by all environments is given as `[1, D]`.
    NumPy arrays are converted with `torch.as_tensor`; any other value (a string, a callable,
    a list) is passed through as it is. A value wrapped in `Shared` (`lp.shared(Q)`) is one value
    for all environments whatever its shape: it is neither checked against B nor expanded.

    Dtype: at evaluation, floating context tensors are cast to the evaluated state's dtype
    (`expand(..., dtype=)`), so a float64 model's rewards read float64 context values.

    B is not inferred: a `[D]` vector could mean "one value per environment" or "one vector for
    all", so tensors whose leading dimension is not 1 need `batch=B`.

    Expanded values are cached per `(N, device, dtype)` (unless a value requires grad; the last
    `_EXPANDED_CACHE` = 8 such keys), and the model's
    `decode` output is cached for the last state object decoded, so several decoded terms of
    one objective decode each imagined state once. Both caches are dropped when a tensor they
    were made from is modified in place (its version counter moves). `copy.deepcopy` and
    pickling copy the model and the values, not the caches.

    Args:
        model: the `WorldModel` whose `decode` (and `reward`) the terms read.
        context: name -> value; `None` is an empty context.
        batch: B, the number of environments planned for in the call (a Python or NumPy int).

    Raises:
        ValueError: `batch` is not a positive int; a tensor value's leading dimension is neither
            1 nor B, or is not 1 and no `batch` was given (the message names the key);
            (at evaluation) N is not a multiple of B while a `[B, ...]` value needs expanding.
        TypeError: a key is not a string.
    """

    def __init__(
        self, model: WorldModel, context: Mapping[str, Any] | None = None, *, batch: int | None = None
    ) -> None:
        if batch is not None and (isinstance(batch, (bool, np.bool_)) or not isinstance(batch, numbers.Integral)
                                  or batch < 1):
            raise ValueError(
                f"reward context: batch must be a positive int (B, the number of environments); got {batch!r}"
            )
        batch = None if batch is None else int(batch)
        if context is not None and not isinstance(context, Mapping):
            raise TypeError(f"reward context must be a dict of name -> value; got {type(context).__name__}")
        self.model = model
        self.batch = batch
        values: dict[str, Any] = {}
        for key, value in (context or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"reward context: keys must be strings; got {key!r}")
            if isinstance(value, np.ndarray):
                value = torch.as_tensor(value)
            if isinstance(value, Shared) and isinstance(value.value, np.ndarray):
                value = Shared(torch.as_tensor(value.value))
            if isinstance(value, Tensor) and value.dim() >= 1:
                lead = value.shape[0]
                if batch is None and lead != 1:
                    raise ValueError(
                        f"reward context[{key!r}] has shape {tuple(value.shape)}: a tensor with a leading "
                        "dimension is per environment ([B, ...], or [1, ...] shared by all), so the "
                        f"objective needs batch=B (e.g. Objective(..., batch={lead})); give a vector "
                        f"shared by all environments as [1, ...] (context[{key!r}][None]), or any value "
                        "shared by all (a matrix) as lp.shared(value)"
                    )
                if batch is not None and lead not in (1, batch):
                    raise ValueError(
                        f"reward context[{key!r}] has shape {tuple(value.shape)}: its leading dimension "
                        f"must be B={batch} (one entry per environment) or 1 (shared); got {lead} "
                        "(a value shared by all environments, such as a matrix, is given as lp.shared(value))"
                    )
            values[key] = value
        self.values: Mapping[str, Any] = MappingProxyType(values)
        self._expanded: dict[tuple[int, torch.device], tuple[tuple | None, dict[str, Any]]] = {}
        self._env_rows: Tensor | None = None  # set by `rows_of`: the environment of each row
        # whether a value differs between environments ([B, ...] with B > 1): only then does `rows_of` matter
        self._per_environment = any(isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] > 1 for v in values.values())
        self._decoded: tuple[LatentState, bool, tuple | None, dict[str, Any]] | None = None
        # the entry before `_decoded`: a transition term decodes the states before and after
        self._decoded_before: tuple[LatentState, bool, tuple | None, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"RewardContext(keys={list(self.values)}, batch={self.batch})"

    def __getstate__(self) -> dict[str, Any]:
        """For `copy.deepcopy` and pickling: the values as a plain dict (a `MappingProxyType`
        cannot be pickled), the caches left out."""
        state = dict(self.__dict__)
        state["values"] = dict(self.values)
        state.update(_expanded={}, _env_rows=None, _decoded=None, _decoded_before=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["values"] = MappingProxyType(dict(state["values"]))
        self.__dict__.update(state)

    @contextlib.contextmanager
    def rows_of(self, env: Tensor) -> Iterator[None]:
        """Within the block, evaluations of `N = len(env)` rows give row i the context of
        environment `env[i]` (instead of the block layout `b * (N // B) + j`). For a planner that
        evaluates some environments' rows only, e.g. MCTS expanding the leaves of the
        environments whose trees are not yet at the horizon; evaluations of another N keep the
        block layout.

        Args:
            env: `[N]` int64 environment indices in [0, B).

        Raises:
            ValueError: `env` is not a 1-D integer tensor (on entry).
        """
        if not isinstance(env, Tensor) or env.dim() != 1 or env.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"RewardContext.rows_of: env must be a 1-D int64 tensor [N]; got {env!r}")
        if not self._per_environment:  # nothing depends on the row's environment: keep the cached path
            yield
            return
        before, self._env_rows = self._env_rows, env
        try:
            yield
        finally:
            self._env_rows = before

    def expand(self, n: int, device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The context for `N = n` rows on `device`: a new dict each call (values may be shared).

        Args:
            n: N, the rows evaluated.
            device: where the evaluation runs.
            dtype: the evaluated state's floating dtype; floating context tensors (plain and
                `Shared`) are cast to it, so a float64 model reads float64 context values and a
                float32 model float32 ones. `None` leaves dtypes as given.

        Returns:
            name -> value, tensors with a leading dimension as `[N, ...]`, `Shared` values
            unwrapped and not expanded (see the class).

        Raises:
            ValueError: N is not a multiple of B while a `[B, ...]` value (B > 1) needs expanding.
        """
        env_rows = self._env_rows if self._env_rows is not None and self._env_rows.shape[0] == n else None
        key = (n, device, dtype)
        versions = None if env_rows is not None else _versions(*(
            v.value if isinstance(v, Shared) else v for v in self.values.values()
            if isinstance(v.value if isinstance(v, Shared) else v, Tensor)
        ))
        hit = self._expanded.get(key)
        if hit is not None and versions is not None and hit[0] == versions:
            return dict(hit[1])
        out: dict[str, Any] = {}
        cacheable = True
        for name, value in self.values.items():
            if isinstance(value, Shared):
                value = value.value
                if isinstance(value, Tensor):
                    value = value.to(device, dtype) if dtype is not None and value.is_floating_point() \
                        else value.to(device)
                    cacheable = cacheable and not value.requires_grad
            elif isinstance(value, Tensor):
                value = value.to(device, dtype) if dtype is not None and value.is_floating_point() else value.to(device)
                if value.dim() >= 1:
                    if value.shape[0] == 1:
                        value = value.expand(n, *value.shape[1:])
                    elif env_rows is not None:  # row i belongs to environment env_rows[i] (`rows_of`)
                        value = value.index_select(0, env_rows.to(value.device))
                    else:
                        b = value.shape[0]  # == self.batch, checked at construction
                        if n % b:
                            raise ValueError(
                                f"reward context[{name!r}] is per environment ([B={b}, ...]) but the "
                                f"objective is evaluated on N={n} rows, not a multiple of B; planners "
                                "evaluate N = B * J rows, row b*J + j for environment b"
                            )
                        value = value.repeat_interleave(n // b, dim=0)
                cacheable = cacheable and not value.requires_grad
            out[name] = value
        if cacheable and versions is not None:
            self._expanded[key] = (versions, out)
            while len(self._expanded) > _EXPANDED_CACHE:  # a long-lived objective evaluated on many N
                del self._expanded[next(iter(self._expanded))]
        return dict(out)

    def decode(self, state: LatentState) -> dict[str, Any]:
        """`model.decode(state)` with single-column named slices squeezed: a new dict each call.

        Every entry except `"obs"` that is `[N, 1]` becomes `[N]` (e.g. `obs["pole_cos"]`);
        `"obs"` and multi-column entries (`obs["position"]` `[N, 3]`, an `"image"`) are as decoded.
        The result is cached for the last two state objects (and grad mode) seen, while their
        tensors are not modified in place (two: a transition term decodes the states before and
        after the action).

        Raises:
            TypeError: the model has no `decode`, or it does not return a dict.
        """
        grad = torch.is_grad_enabled()
        versions = _versions(state.deter, state.stoch)
        for cached in (self._decoded, self._decoded_before):
            if cached is not None and cached[0] is state and cached[1] == grad and versions is not None and cached[2] == versions:
                return dict(cached[3])
        decode = getattr(self.model, "decode", None)
        if not callable(decode):
            raise TypeError(
                f"reward context: {type(self.model).__name__} has no decode(state) for inputs='decoded' terms"
            )
        raw = decode(state)
        if not isinstance(raw, Mapping):
            raise TypeError(
                f"{type(self.model).__name__}.decode must return a dict of name -> [N, ...] tensors; "
                f"got {type(raw).__name__}"
            )
        obs = {
            k: v.squeeze(1) if k != "obs" and isinstance(v, Tensor) and v.dim() == 2 and v.shape[1] == 1 else v
            for k, v in raw.items()
        }
        self._decoded_before, self._decoded = self._decoded, (state, grad, versions, obs)
        return dict(obs)

    def bind(self, term: "Reward | Callable[[LatentState, Tensor], Tensor]") -> Callable[[LatentState, Tensor], Tensor]:
        """Bind a term to this context.

        Args:
            term: a `Reward`, or a plain callable `(next_state [N], action [N, A]) -> [N]`.

        Returns:
            A `BoundReward` for a `Reward`; a plain callable unchanged.

        Raises:
            TypeError: `term` is not callable, or the model lacks `decode`/`reward` that the
                term needs.
        """
        if isinstance(term, Reward):
            for leaf in term.leaves():
                if isinstance(leaf, LearnedReward):
                    need = "reward"
                elif getattr(leaf, "inputs", None) == "decoded":
                    need = "decode"
                else:
                    continue
                if not callable(getattr(self.model, need, None)):
                    raise TypeError(
                        f"reward {leaf.name!r} needs {type(self.model).__name__}.{need}(state), which it lacks"
                    )
            return BoundReward(term, self)
        if not callable(term):
            raise TypeError(f"a reward term must be a Reward or a callable (next_state, action) -> [N]; got {term!r}")
        return term


# --------------------------------------------------------------------------- terms
def _is_number(x: object) -> bool:
    """A Python or NumPy real number (a 0-dim NumPy array counts), not a bool."""
    if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_, Tensor))


def _refuse_operand(term: "Reward", other: object, op: str) -> None:
    """A clear `TypeError` for the operands that look like weights but are not accepted (a tensor,
    an array, a bool, a complex number); other operands are left to Python (`NotImplemented`)."""
    if isinstance(other, Tensor) or (isinstance(other, np.ndarray) and not _is_number(other)):
        raise TypeError(
            f"reward {term.name!r} {op} a {type(other).__name__} of shape {tuple(other.shape)}: reward weights are "
            "Python or NumPy numbers (use float(w)); a weight that varies per call or per environment goes "
            "in the context and is applied inside the function (ctx['w'] * ...)"
        )
    if isinstance(other, (bool, np.bool_, complex)):
        raise TypeError(f"reward {term.name!r} {op} {other!r}: reward weights are real numbers, not {type(other).__name__}")


def _weight(x: object) -> float:
    try:
        w = float(x)  # type: ignore[arg-type]
    except OverflowError:
        raise ValueError(f"reward weights must be finite; got an int of {len(str(abs(x)))} digits, too large for a float") from None
    if not math.isfinite(w):
        raise ValueError(f"reward weights must be finite; got {w}")
    return w


class Reward:
    """A reward term: a function of one imagined transition, composable with `+`, `-` and scalar `*`.

    Made by `reward` (a user function), `learned_reward` (the model's head) or by composing
    terms. Unbound, a term knows neither the model nor the context; `bind` (or `Objective`)
    attaches them and gives a `BoundReward` `(next_state [N], action [N, A]) -> [N]`.

    Attributes:
        name: the user function's name, or the expression of a composite.
        differentiable: False if gradients through the term are meaningless (gradient planners
            refuse such a term); a composite's is the AND of its parts.

    Composition (numbers are Python/NumPy reals, a 0-dim NumPy array included; a tensor weight is
    not accepted):
        `a + b`, `a - b`, `-a`, `w * a`, `a * w`, `a / w`, `sum([a, b])` (`0 + a` is `a`).

    Pickling: a term made by `@reward` on a module-level function pickles by reference (by its
    module and name, as the function would); composites pickle their parts.

    Raises:
        TypeError: adding a non-zero constant (it would not change any plan), or combining with
            something that is neither a term nor a number; a tensor, an array with dimensions, a
            bool or a complex number as a weight (naming it: weights are real numbers).
        ValueError: a non-finite weight, also one that overflows when weights are folded
            (`a * 1e200 * 1e200`) or divided (`a / 1e-320`); division by 0.
    """

    name: str
    differentiable: bool
    stage: str = "arrival"

    @property
    def needs_prev(self) -> bool:
        """True if a part of this term is a `stage="transition"` term (it reads the state before)."""
        return any(leaf.stage == "transition" for leaf in self.leaves())

    @property
    def is_continuation(self) -> bool:
        """True if a part of this term is a `stage="continuation"` term (it belongs in `continuation=`)."""
        return any(leaf.stage == "continuation" for leaf in self.leaves())

    @property
    def is_terminal(self) -> bool:
        """True if a part of this term is a `stage="terminal"` term (it belongs in `terminal=`)."""
        return any(leaf.stage == "terminal" for leaf in self.leaves())

    def bind(
        self, model: WorldModel, context: Mapping[str, Any] | None = None, *, batch: int | None = None
    ) -> "BoundReward":
        """This term bound to `model` and `context` (see `RewardContext` for B and the values).

        Returns:
            A `BoundReward`: `(next_state [N], action [N, A]) -> [N]`.

        Raises:
            ValueError, TypeError: as `RewardContext` and `RewardContext.bind`.
        """
        bound = RewardContext(model, context, batch=batch).bind(self)
        assert isinstance(bound, BoundReward)
        return bound

    def leaves(self) -> Iterator["Reward"]:
        """The user and learned terms this term is made of (itself for a leaf)."""
        yield self

    def _evaluate(
        self, state: LatentState, action: Tensor | None, context: RewardContext, prev: LatentState | None = None
    ) -> Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"reward {self.name!r} is not bound to a model: pass it to Objective(model, rewards=[...]) "
            "or call term.bind(model, context)(next_state, action)"
        )

    def __repr__(self) -> str:
        return f"Reward({self.name}, differentiable={self.differentiable})"

    # composition ---------------------------------------------------------
    # NumPy defers to the reflected operators of terms (`np.float64(2) * term` is a term, an array
    # times a term is refused by `__rmul__`) instead of building an object array
    __array_ufunc__ = None

    def __add__(self, other: object) -> "Reward":
        if isinstance(other, Reward):
            return SumReward(self, other)
        _refuse_operand(self, other, "+")
        if _is_number(other):
            if other == 0:
                return self
            raise TypeError(
                f"cannot add the constant {other!r} to reward {self.name!r}: only terms add to terms "
                "(0 is allowed, for sum()); a constant would not change any plan"
            )
        return NotImplemented

    def __radd__(self, other: object) -> "Reward":
        return self.__add__(other)

    def __sub__(self, other: object) -> "Reward":
        if isinstance(other, Reward):
            return SumReward(self, -other)
        return self.__add__(other)

    def __rsub__(self, other: object) -> "Reward":
        return (-self).__add__(other)

    def __neg__(self) -> "Reward":
        return ScaledReward.of(-1.0, self)

    def __mul__(self, other: object) -> "Reward":
        _refuse_operand(self, other, "*")
        if _is_number(other):
            return ScaledReward.of(_weight(other), self)
        return NotImplemented

    def __rmul__(self, other: object) -> "Reward":
        return self.__mul__(other)

    def __truediv__(self, other: object) -> "Reward":
        _refuse_operand(self, other, "/")
        if _is_number(other):
            w = _weight(other)
            if w == 0:
                raise ValueError(f"cannot divide reward {self.name!r} by 0")
            return ScaledReward.of(_weight(1.0 / w), self)
        return NotImplemented


class UserReward(Reward):
    """A user function as a reward term; made by `reward`.

    Calling the term itself calls the user function unchanged (handy for unit-testing it).

    Attributes:
        fn: the user function.
        inputs: `"decoded"` (`fn(obs, action, ctx)`) or `"latent"` (`fn(state, action, ctx)`).
        stage: `"arrival"`, `"transition"` or `"terminal"` (see `reward`).
    """

    def __init__(
        self, fn: Callable[..., Tensor], *, inputs: Inputs, differentiable: bool, name: str | None,
        stage: Stage = "arrival",
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.inputs = inputs
        self.stage = stage
        self.differentiable = bool(differentiable)
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> Any:
        """Pickle by reference when this term is what its module holds under its name (the usual
        `@reward` on a module-level function, which shadows the function: the function itself can
        then not be pickled by reference); otherwise rebuild it from the function and the options."""
        if _lookup(self) is self:
            return self.__qualname__
        fn: Any = self.fn
        holder = _lookup(fn)
        if isinstance(holder, UserReward) and holder.fn is fn:  # the function is shadowed by that term: via it
            fn = holder
        return (_rebuild_user_reward, (fn, self.inputs, self.differentiable, self.name, self.stage))

    def _evaluate(
        self, state: LatentState, action: Tensor | None, context: RewardContext, prev: LatentState | None = None
    ) -> Tensor:
        n, device, dtype = state.batch, state.device, state.deter.dtype
        ctx = context.expand(n, device, dtype)

        def view(s: LatentState) -> Any:
            return context.decode(s) if self.inputs == "decoded" else s

        first = view(state)
        if self.stage == "transition" and prev is None:
            raise ValueError(
                f"reward {self.name!r} is a transition term and needs the state before the action: "
                "call it as bound(next_state, action, prev_state=state)"
            )
        if self.stage != "transition":
            prev = None  # only a transition term reads (and is checked on) the state before
        if self.stage == "terminal":
            action = None
        before = view(prev) if prev is not None else None
        # in-place modification of the inputs (they are the planner's imagined states, actions and the
        # caller's context, shared with the other terms): version counters, no host synchronisation
        watched = [] if _capturing(device) else _watched_inputs(state, action, prev, first, before, ctx)
        versions = _watch_versions(watched)
        try:
            if self.stage in ("arrival", "continuation"):
                out = self.fn(first, action, ctx)
            elif self.stage == "transition":
                out = self.fn(before, first, action, ctx)
            else:
                out = self.fn(first, ctx)
        except Exception as e:
            seen = f"obs keys {sorted(first)}" if self.inputs == "decoded" else "a LatentState"
            e.add_note(
                f"in reward {self.name!r} (inputs={self.inputs!r}, stage={self.stage!r}): it was given {seen} "
                f"and context keys {sorted(ctx)}"
            )
            raise
        if versions is not None and _watch_versions(watched) != versions:
            labels = _watched_labels(first, prev, before, action, ctx)
            changed = [label for label, t, v in zip(labels, watched, versions) if t._version != v]
            shared = " (views of one tensor share a version counter: all of them are listed)" if len(changed) > 1 else ""
            raise ValueError(
                f"reward {self.name!r} modified its inputs in place: {', '.join(changed)}{shared}. "
                "Rewards must not modify their inputs: "
                "they are the planner's imagined states and actions and your context, shared with the other "
                "terms and the next evaluations; use out-of-place operations (x = x * 0, not x.mul_(0); "
                "a = a.clamp(...), not a.clamp_(...))"
            )
        kind = "continuation" if self.stage == "continuation" else "reward"
        if self.stage == "continuation":
            out = check_continuation_output(out, self.name, n, device, dtype)
        else:
            out = check_reward_output(out, self.name, n, device)
        if self.differentiable:
            check_reward_gradient(out, self.name, (state, action, prev), kind=kind)
        # dtype follows the model: a float32 output on a float64 state (or the reverse) is cast
        return out if out.dtype == dtype or not dtype.is_floating_point else out.to(dtype)


def _lookup(obj: Any) -> Any:
    """What `obj`'s module holds under `obj`'s qualified name (None if nothing)."""
    found: Any = sys.modules.get(getattr(obj, "__module__", None) or "")
    for part in (getattr(obj, "__qualname__", None) or "<unnamed>").split("."):
        found = getattr(found, part, None)
    return found


def _rebuild_user_reward(fn: Any, inputs: Inputs, differentiable: bool, name: str, stage: Stage) -> "UserReward":
    """Unpickle a `UserReward` (see `UserReward.__reduce__`); `fn` may be the term that holds it."""
    fn = fn.fn if isinstance(fn, UserReward) else fn
    return UserReward(fn, inputs=inputs, differentiable=differentiable, name=name, stage=stage)


class LearnedReward(Reward):
    """The model's learned reward head `model.reward(next_state) -> [N]` as a term; see `learned_reward`."""

    def __init__(self) -> None:
        self.name = "learned_reward"
        self.differentiable = True

    def _evaluate(
        self, state: LatentState, action: Tensor | None, context: RewardContext, prev: LatentState | None = None
    ) -> Tensor:
        return check_reward_output(context.model.reward(state), self.name, state.batch, state.device)


def _refuse_continuation(term: Reward, expression: str) -> None:
    """Continuation terms are probabilities, not rewards: sums and weights of them mean nothing."""
    if any(leaf.stage == "continuation" for leaf in term.leaves()):
        raise TypeError(
            f"cannot compose the continuation term {term.name!r} ({expression}): a continuation is a "
            "probability in [0, 1], not a reward; combine conditions inside one @lp.continuation function "
            "(e.g. multiply probabilities, or & bool flags) and pass it as Objective(continuation=...)"
        )


class ScaledReward(Reward):
    """`weight * term`; made by `*`, `/` and unary `-` on terms.

    Attributes:
        weight: the float factor.
        term: the scaled term.
    """

    def __init__(self, weight: float, term: Reward) -> None:
        _refuse_continuation(term, f"{weight:g} * {term.name}")
        self.weight = float(weight)
        self.term = term
        self.differentiable = term.differentiable
        inner = f"({term.name})" if isinstance(term, SumReward) else term.name
        self.name = f"-{inner}" if self.weight == -1 else f"{self.weight:g}*{inner}"

    @staticmethod
    def of(weight: float, term: Reward) -> Reward:
        """`weight * term`, folding nested weights (`2 * (3 * a)` is `6 * a`; `1 * a` is `a`)."""
        if isinstance(term, ScaledReward):
            weight, term = weight * term.weight, term.term
            if not math.isfinite(weight):
                raise ValueError(f"reward weights must be finite; the weights of {term.name!r} multiply to {weight}")
        return term if weight == 1 else ScaledReward(weight, term)

    def leaves(self) -> Iterator[Reward]:
        yield from self.term.leaves()

    def _evaluate(
        self, state: LatentState, action: Tensor | None, context: RewardContext, prev: LatentState | None = None
    ) -> Tensor:
        return self.weight * self.term._evaluate(state, action, context, prev)


class SumReward(Reward):
    """The sum of terms; made by `+` and `-` on terms. Nested sums are flattened.

    Attributes:
        terms: the summed terms, in order.
    """

    def __init__(self, *terms: Reward) -> None:
        flat: list[Reward] = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumReward) else (t,))
        for t in flat:
            _refuse_continuation(t, " + ".join(u.name for u in flat))
        stages = {leaf.stage for t in flat for leaf in t.leaves() if not isinstance(leaf, LearnedReward)}
        if "terminal" in stages and len(stages) > 1:
            raise TypeError(
                "cannot add a stage='terminal' reward to a per-step one: terminal terms go in "
                "Objective(terminal=...), per-step terms in Objective(rewards=[...])"
            )
        self.terms = tuple(flat)
        self.differentiable = all(t.differentiable for t in flat)
        parts = [flat[0].name]
        for t in flat[1:]:
            if isinstance(t, ScaledReward) and t.weight < 0:
                parts.append(f" - {ScaledReward.of(-t.weight, t.term).name}")
            else:
                parts.append(f" + {t.name}")
        self.name = "".join(parts)

    def leaves(self) -> Iterator[Reward]:
        for t in self.terms:
            yield from t.leaves()

    def _evaluate(
        self, state: LatentState, action: Tensor | None, context: RewardContext, prev: LatentState | None = None
    ) -> Tensor:
        total = self.terms[0]._evaluate(state, action, context, prev)
        for t in self.terms[1:]:
            total = total + t._evaluate(state, action, context, prev)
        return total


class BoundReward:
    """A `Reward` bound to a `RewardContext`: the internal term `(next_state [N], action [N, A]) -> [N]`.

    This is what `Objective.rewards` holds for every `Reward` it was given.

    Attributes:
        term: the unbound `Reward`.
        context: the `RewardContext` (model, context values, B).
        name: `term.name`.
        differentiable: `term.differentiable` (gradient planners check it).
        needs_prev: True if the term has a `stage="transition"` part, which reads the state
            before the action: `Objective` then passes `prev_state`.

    Raises (from a call):
        TypeError, ValueError: a user function's output is not a floating `[N]` tensor on the
            action's device (named in the message; see `check_reward_output`), or a context
            value cannot be expanded to N rows; whatever a user function raises, with a note
            naming it.
    """

    def __init__(self, term: Reward, context: RewardContext) -> None:
        self.term = term
        self.context = context
        self.name = term.name
        self.differentiable = term.differentiable
        self.needs_prev = term.needs_prev

    def __call__(
        self, next_state: LatentState, action: Tensor | None, prev_state: LatentState | None = None
    ) -> Tensor:
        """`[N]` reward of taking `action [N, A]` in `prev_state` (`[N]` rows; read by transition
        terms only) and arriving in `next_state` (`[N]` rows). A terminal term reads only
        `next_state` (`action` may be None). The output has `next_state.deter`'s dtype."""
        return self.term._evaluate(next_state, action, self.context, prev_state)

    def __repr__(self) -> str:
        return f"BoundReward({self.name}, differentiable={self.differentiable}, {self.context!r})"


@overload
def reward(
    fn: Callable[..., Tensor], *, inputs: Inputs = "decoded", stage: Stage = "arrival",
    differentiable: bool = True, name: str | None = None,
) -> UserReward: ...
@overload
def reward(
    fn: None = None, *, inputs: Inputs = "decoded", stage: Stage = "arrival",
    differentiable: bool = True, name: str | None = None,
) -> Callable[[Callable[..., Tensor]], UserReward]: ...
def reward(fn=None, *, inputs="decoded", stage="arrival", differentiable=True, name=None):
    """Turn a user function into a reward term (a `Reward`); usable as `@reward` or `@reward(...)`.

    Args:
        fn: with `inputs="decoded"`: `fn(obs, action, ctx) -> [N]`, where `obs` is
            `model.decode(next_state)`: a dict of named physical quantities, `"obs"` `[N, D]`
            as decoded and every other single-column entry `[N, 1]` squeezed to `[N]`
            (`obs["pole_cos"]`, `obs["cart_x"]`), multi-column ones as they are
            (`obs["position"]` `[N, 3]`). With `inputs="latent"`: `fn(state, action, ctx)`
            with `state` the `LatentState` (`[N]` rows). `action` is `[N, A]`, the action
            taken to arrive in `next_state`; `ctx` is the objective's context with per-env
            tensors as `[N, ...]` rows (see `RewardContext`). The function must return a
            floating `[N]` tensor on the action's device; it must not modify its inputs.
        inputs: `"decoded"` or `"latent"`, as above.
        stage: which states the function reads (the first arguments are decoded dicts or
            `LatentState`s, per `inputs`):
            `"arrival"` (default): `fn(obs, action, ctx)`, the state the action arrives in.
            `"transition"`: `fn(prev_obs, obs, action, ctx)`, the state before the action
            (`prev_obs`, `[N]` rows: the start belief at step 0) and after it (`obs`), for a
            stage cost on the current state such as `x_t^T Q x_t + u_t^T R u_t`.
            `"terminal"`: `fn(obs, ctx)`, the final state of a rollout; such a term goes in
            `Objective(terminal=...)`, not in `rewards=`, and cannot be added to per-step terms.
            `"continuation"`: `fn(obs, action, ctx)` as `"arrival"`, but returning the
            probability in [0, 1] that the episode continues after arriving in `obs` (or a bool
            tensor, True = not done); such a term goes in `Objective(continuation=...)` and
            composes with nothing (`continuation` is the same with this stage).
        differentiable: False if gradients through `fn` are meaningless (it thresholds,
            uses `argmax`, NumPy, ...); gradient planners then refuse the term.
        name: the term's name in messages and expressions; default `fn.__name__`.

    Returns:
        A `UserReward` (or, without `fn`, a decorator making one).

    Raises:
        ValueError: `inputs` is not `"decoded"` or `"latent"`; `stage` is not one of
            `"arrival"`, `"transition"`, `"terminal"`, `"continuation"`.
        TypeError: `fn` is not callable (e.g. `@reward("latent")` instead of
            `@reward(inputs="latent")`) or is already a term; `differentiable` is not a bool
            (a string such as `"no"` would read as True); `name` is not a non-empty string.

    At evaluation (in `Objective.returns` / `step` and every planner, naming the term), beside
    the output checks of `check_reward_output`: `ValueError` if the function modified an input
    in place (a state, a decoded quantity, the action or a context value: compared by version
    counter, no host synchronisation), or if a term marked differentiable returns an output
    without gradient while a gradient planner differentiates it (`check_reward_gradient`).
    """
    if inputs not in _INPUTS:
        raise ValueError(f"reward: inputs must be one of {list(_INPUTS)}; got {inputs!r}")
    if stage not in _STAGES:
        raise ValueError(f"reward: stage must be one of {list(_STAGES)}; got {stage!r}")
    if not isinstance(differentiable, (bool, np.bool_)):
        raise TypeError(f"reward: differentiable must be True or False; got {differentiable!r}")
    if name is not None and not (isinstance(name, str) and name):
        raise TypeError(f"reward: name must be a non-empty string or None (the function's name); got {name!r}")

    def wrap(f: Callable[..., Tensor]) -> UserReward:
        if isinstance(f, Reward):
            raise TypeError(f"reward: {f.name!r} is already a reward term")
        if not callable(f):
            raise TypeError(
                f"reward: expected a function; got {f!r} (options are keywords: @reward(inputs='latent'))"
            )
        return UserReward(f, inputs=inputs, differentiable=differentiable, name=name, stage=stage)

    return wrap if fn is None else wrap(fn)


@overload
def continuation(
    fn: Callable[..., Tensor], *, inputs: Inputs = "decoded", differentiable: bool = True, name: str | None = None,
) -> UserReward: ...
@overload
def continuation(
    fn: None = None, *, inputs: Inputs = "decoded", differentiable: bool = True, name: str | None = None,
) -> Callable[[Callable[..., Tensor]], UserReward]: ...
def continuation(fn=None, *, inputs="decoded", differentiable=True, name=None):
    """Turn a user function into a continuation term for `Objective(continuation=...)`: the
    probability that the episode continues after an imagined step (`reward(stage="continuation")`).

    The function is written as an arrival reward, `fn(obs, action, ctx)` (decoded quantities of
    the state the action arrives in; `fn(state, action, ctx)` with `inputs="latent"`), and
    returns `[N]` on the action's device: floats in [0, 1] (Dreamer's continue predictor, a
    probability) or a bool tensor, True where the episode goes on (MuZero-style terminal
    flags, negated: `return ~done`). The output is checked on every call
    (`check_continuation_output`). A hard (bool or thresholded) continuation has a zero gradient
    almost everywhere: mark it `differentiable=False` and gradient planners refuse it rather than
    walk past the edge they cannot see.

    ```python
    @lp.continuation
    def alive(obs, action, ctx):
        return obs["height"] > 0.2          # bool [N]: False once the robot has fallen
    objective = lp.Objective(model, rewards=[upright], continuation=alive)
    ```

    Args:
        fn: the function, as above.
        inputs: `"decoded"` or `"latent"`.
        differentiable: as in `reward`.
        name: the term's name in messages; default `fn.__name__`.

    Returns:
        A `UserReward` with `stage="continuation"` (or, without `fn`, a decorator making one).
        It does not compose (`+`, `*` raise `TypeError`).

    Raises:
        ValueError, TypeError: as `reward`.

    Source: Dreamer's discount/continue predictor (Hafner et al. 2021, DreamerV2, Sec. 2;
    DreamerV3, 2023), MuZero's terminal handling (Schrittwieser et al. 2020).
    """
    return reward(fn, inputs=inputs, stage="continuation", differentiable=differentiable, name=name)


def learned_reward() -> LearnedReward:
    """The model's learned reward head as a term: `model.reward(next_state) -> [N]`.

    The default reward of `Objective`; weight it (`0.5 * learned_reward()`) or add it to known
    terms. Source: PlaNet's reward model (Hafner et al. 2019).

    Returns:
        A `Reward` term; bound to an objective it maps `next_state [N]` to `[N]`.

    Raises:
        Nothing here. `TypeError` when an `Objective` binds it to a model without a `reward`
        method (naming the term); at evaluation, the checks of `check_reward_output` on what
        `model.reward` returns.
    """
    return LearnedReward()


# --------------------------------------------------------------------------- conformance checker
@dataclass(frozen=True)
class RewardReport:
    """What `check_reward` found for a term that passed.

    Attributes:
        name: the term's name.
        differentiable: the term's flag.
        gradient_flows: whether `d reward / d action` exists (through the term's action input
            or through the model's step into `next_state`) and is finite.
        rows: N, the rows evaluated (`2 * batch`).
        dtype: the output's dtype.
        device: the output's device.
    """

    name: str
    differentiable: bool
    gradient_flows: bool
    rows: int
    dtype: torch.dtype
    device: torch.device


def _same(a: Tensor, b: Tensor, *, tol: bool = False) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not (a.is_floating_point() or a.is_complex()):
        return torch.equal(a, b)
    if tol:
        return bool(torch.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True).all())
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _call(bound: Callable, nxt: LatentState, action: Tensor, prev: LatentState) -> Tensor:
    """Call a bound term; the state before the action reaches it only if it is a transition term."""
    if isinstance(bound, BoundReward):
        return bound(nxt, action, prev)
    return bound(nxt, action)


def check_reward(
    term: "Reward | Callable[[LatentState, Tensor], Tensor]",
    model: WorldModel,
    *,
    batch: int = 4,
    context: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> RewardReport:
    """Check a reward term against a model, like Gymnasium's env checker; collect every problem.

    Evaluates the term on `N = 2 * batch` rows (B = `batch` environments, two candidates each, as
    a planner lays them out) of beliefs reached from `model.initial` by random in-bounds actions,
    and checks:

    - the output is a floating `[N]` tensor on the action's device;
    - inputs are not modified in place (the state, the state before the action for a
      transition term, the action, the decoded quantities, the context values);
    - determinism: identical inputs give an identical output;
    - rows are independent: evaluated on one candidate per environment, the output is the
      same rows as before (catches rewards normalised over the batch);
    - gradients: whether `d reward / d action` (through the action and through the model's step)
      exists and is finite; missing for a term marked differentiable is a problem.

    The global RNG is left as it was (`torch.random.fork_rng`); beliefs and actions come from a
    generator seeded with `seed`.

    Args:
        term: a `Reward` (from `reward`, `learned_reward` or a composition) or a plain callable
            `(next_state [N], action [N, A]) -> [N]`.
        model: the `WorldModel` to plan with.
        batch: B, the environments simulated; per-env context tensors must be `[B, ...]`.
        context: the context the term reads (see `RewardContext`).
        seed: seed of the beliefs and actions.

    Returns:
        A `RewardReport` when no problem was found.

    Raises:
        ValueError: listing every problem found (the message names the term); also a bad
            `batch` or context (as `RewardContext`).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"check_reward: batch must be a positive int; got {batch!r}")
    name = callable_name(term)
    differentiable = bool(getattr(term, "differentiable", True))
    uses_decode = isinstance(term, Reward) and any(getattr(l, "inputs", None) == "decoded" for l in term.leaves())
    RewardContext(model, context, batch=batch).bind(term)  # context and model errors raise here, as is
    rows = 2
    n = batch * rows
    start = model.initial(batch)
    dev = start.device
    problems: list[str] = []
    flows = False
    out1: Tensor | None = None
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        gen = torch.Generator(device=dev).manual_seed(seed)
        low, high = model.action_low.to(dev), model.action_high.to(dev)

        def actions() -> Tensor:
            return low + (high - low) * torch.rand(n, model.action_dim, generator=gen, device=dev)

        with torch.no_grad():
            prev = model.imagine_step(start.expand(rows), actions(), generator=gen)
            action = actions()
            nxt = model.imagine_step(prev, action, generator=gen)
        pristine = (nxt.deter.clone(), nxt.stoch.clone(), action.clone())

        # 1. one evaluation: output, and inputs untouched
        ctx1 = RewardContext(model, context, batch=batch)
        bound = ctx1.bind(term)
        watched: list[tuple[str, Tensor]] = [
            ("next_state.deter", nxt.deter), ("next_state.stoch", nxt.stoch), ("action", action),
        ]
        if isinstance(term, Reward) and term.needs_prev:
            watched += [("prev_state.deter", prev.deter), ("prev_state.stoch", prev.stoch)]
        with torch.no_grad():
            if uses_decode:
                watched += [(f"obs[{k!r}]", v) for k, v in ctx1.decode(nxt).items() if isinstance(v, Tensor)]
            watched += [(f"context[{k!r}]", v) for k, v in ctx1.values.items() if isinstance(v, Tensor)]
            watched += [(f"ctx[{k!r}] (expanded)", v) for k, v in ctx1.expand(n, dev).items() if isinstance(v, Tensor)]
            snapshot = [(label, t, t.clone()) for label, t in watched]
            try:
                out1 = check_reward_output(_call(bound, nxt, action, prev), name, n, dev)
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                hint = ""
                if isinstance(e, TypeError) and not isinstance(term, Reward):
                    hint = " (a plain callable takes (next_state, action); wrap fn(obs, action, ctx) with @reward)"
                problems.append(f"{type(e).__name__}: {e}{hint}")
        mutated = [label for label, t, before in snapshot if not _same(t, before)]
        if mutated:
            problems.append(f"modified its inputs in place (rewards must not mutate them): {', '.join(mutated)}")

        if out1 is not None:
            # 2. determinism: fresh copies of the same inputs, a fresh context
            with torch.no_grad():
                state2 = LatentState(pristine[0].clone(), pristine[1].clone())
                try:
                    out2 = _call(RewardContext(model, context, batch=batch).bind(term), state2, pristine[2].clone(), prev)
                    deterministic = _same(out1, out2)
                    if not deterministic:
                        where = " (or model.decode)" if uses_decode else ""
                        problems.append(
                            f"is not deterministic{where}: two calls on identical inputs differ "
                            f"(max |diff| {float((out1 - out2).abs().nan_to_num(0.0).max()):.3g}); "
                            "keep no hidden state or randomness"
                        )
                    # 3. rows are independent: one candidate per environment (meaningless if not deterministic)
                    keep = torch.arange(0, n, rows, device=dev)
                    state3 = LatentState(pristine[0][keep].clone(), pristine[1][keep].clone())
                    out3 = _call(RewardContext(model, context, batch=batch).bind(term), state3,
                                 pristine[2][keep].clone(), prev.index(keep))
                    if deterministic and not _same(out1[keep], out3, tol=True):
                        problems.append(
                            "rows are not independent: evaluated on a subset of rows it gives other values "
                            "for the same rows (do not normalise or reduce over the batch)"
                        )
                except Exception as e:  # noqa: BLE001
                    problems.append(f"a repeated call raised {type(e).__name__}: {e}")

            # 4. gradients to the action, through the term and through the model's step
            act = pristine[2].clone().requires_grad_(True)
            grad_note = ""
            try:
                with torch.enable_grad():
                    step_gen = torch.Generator(device=dev).manual_seed(seed + 1)
                    nxt4 = model.imagine_step(prev, act, generator=step_gen)
                    g = None
                    try:
                        r = _call(RewardContext(model, context, batch=batch).bind(term), nxt4, act, prev)
                    except NoGradientError:  # the term's own check: no gradient (reported below)
                        r = None
                    if r is not None and r.requires_grad:
                        (g,) = torch.autograd.grad(r.sum(), act, allow_unused=True)
                flows = g is not None and bool(torch.isfinite(g).all())
                if g is not None and not flows:
                    grad_note = "the gradient w.r.t. the action has NaN/inf"
                elif g is None:
                    grad_note = (
                        "no gradient reaches the action (mark it reward(..., differentiable=False) "
                        "if gradients through it are meaningless)"
                    )
            except Exception as e:  # noqa: BLE001
                grad_note = f"backpropagation raised {type(e).__name__}: {e}"
            if differentiable and not flows:
                problems.append(f"is marked differentiable but {grad_note}")

    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"check_reward: reward {name!r} has {len(problems)} problem(s):\n{listing}")
    assert out1 is not None
    return RewardReport(name, differentiable, flows, n, out1.dtype, out1.device)
