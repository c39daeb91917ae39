"""Capture-ready planning: run a planner's static-shape search in a CUDA graph or through torch.compile.

Planning over a learned model on a GPU is launch-bound: a CEM decision at PlaNet's settings is
120,000 small RSSM steps whose arithmetic is small beside the cost of their thousands of kernel
launches, issued one by one from Python (docs/gpu.md has the measurements). A CUDA graph records the launches of one
whole plan call once and replays them with a single launch (NVIDIA, "CUDA Graphs", CUDA C++
Programming Guide; PyTorch's `torch.cuda.graph`). That is possible because the planners' search
loops are *capture-ready*: static shapes for given settings, no host synchronisation inside (no
`.item()`, no Python branch on a tensor value; top-K and refits stay on the device), and all
randomness drawn from one `torch.Generator`.

The pieces here are shared by the planners' `compile=` option:

- `resolve_compile`: which mode a planner runs in ("auto" picks the fastest correct one);
- `run_captured`: a planner's search through the cache, built, verified and replayed (what
  both `CEM` and `GradientPlanner` call for a captured mode);
- `CaptureCache` / `CapturedSearch`: keep one captured (or compiled) search per objective
  structure, batch size and generator, copy fresh inputs into its static buffers, replay;
- `StaticObjective`: a copy of an `Objective` whose context tensors live in static buffers, so
  one graph serves every plan call whose objective has the same structure;
- `no_host_sync`: a context manager that raises `HostSyncError` on any operation that makes the
  host wait for the device (used by the tests on CPU, where `torch.cuda.set_sync_debug_mode`
  cannot help).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .objective import Objective
from .rewards import BoundReward, LearnedReward, Reward, ScaledReward, Shared, SumReward, UserReward

__all__ = [
    "CaptureMismatch", "CompileMode", "CaptureCache", "CapturedSearch", "HostSyncError", "check_first_replay", "StaticObjective", "no_host_sync",
    "objective_key", "resolve_compile", "run_captured",
]

CompileMode = Literal["auto", "eager", "static", "cuda_graph", "torch_compile"]
_MODES = ("auto", "eager", "static", "cuda_graph", "torch_compile")


def resolve_compile(mode: str, device: torch.device, *, planner: str, not_capturable: str | None = None) -> str:
    """The mode a plan call runs in.

    Args:
        mode: the planner's `compile` setting:
            - `"eager"`: the plain loop (anytime: the deadline is checked every iteration);
            - `"static"`: the capture-ready search on static buffers, without capture (the very
              code a graph records; for tests and debugging, on any device);
            - `"cuda_graph"`: that search captured once in a CUDA graph, then replayed;
            - `"torch_compile"`: that search through `torch.compile`;
            - `"auto"`: `"cuda_graph"` on a CUDA device when the settings allow it, else `"eager"`.
        device: where the beliefs live.
        planner: the planner's name, for messages.
        not_capturable: why these settings cannot be captured, or None if they can.

    Returns:
        one of `"eager"`, `"static"`, `"cuda_graph"`, `"torch_compile"`.

    Raises:
        ValueError: an unknown mode; `"cuda_graph"` off CUDA; a captured mode with settings that
            cannot be captured (the message says why).
    """
    if mode not in _MODES:
        raise ValueError(f"{planner}: compile must be one of {list(_MODES)}; got {mode!r}")
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" and not_capturable is None else "eager"
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"{planner}: compile='cuda_graph' needs the beliefs on a CUDA device; they are on {device}")
    if mode != "eager" and not_capturable is not None:
        raise ValueError(f"{planner}: compile={mode!r} cannot be used with these settings: {not_capturable}")
    return mode


# ---------------------------------------------------------------------------------------- host syncs
class CaptureMismatch(RuntimeError):
    """A captured search's first replay did not reproduce the eager loop's plan (see
    `check_first_replay`)."""


def check_first_replay(
    runner: "CapturedSearch", inputs: dict[str, Tensor], eager: Callable[[], dict[str, Tensor]],
    generator: torch.Generator | None, device: torch.device, *, planner: str, atol: float = 1e-4,
) -> dict[str, Tensor]:
    """Run a new capture's first call and check it against the eager loop on the same inputs and
    the same generator state; return the captured outputs.

    A captured graph replays exactly the kernels of the eager call, so the plans must agree to
    float tolerance; if they do not, something the capture depends on was not captured (a
    Python-side cache, a value read on the host), and planning with the graph would be silently
    wrong. The check costs one eager plan per capture. Afterwards the generator has advanced once,
    as for one plan call.

    Raises:
        CaptureMismatch: naming the output that differs and by how much.
    """
    if device.type == "cuda":
        gen = generator if generator is not None else torch.cuda.default_generators[device.index or torch.cuda.current_device()]
    else:
        gen = generator if generator is not None else torch.default_generator
    saved = gen.get_state()
    ref = eager()
    gen.set_state(saved)
    out = runner(inputs)
    for k, v in ref.items():
        got = out[k]
        same = torch.isclose(got, v, atol=atol, rtol=atol) | (torch.isneginf(got) & torch.isneginf(v))
        if not bool(same.all()):
            diff = (got.float() - v.float()).abs().nan_to_num(posinf=float("inf")).max().item()
            raise CaptureMismatch(
                f"{planner}: the captured search ({runner.mode}) did not reproduce the eager plan on its "
                f"first call: {k!r} differs by up to {diff:.3g}; plan with compile='eager' and report this"
            )
    runner.verified = True
    return out


class HostSyncError(RuntimeError):
    """An operation that makes the host wait for the device ran inside `no_host_sync()`."""


_SYNCING = {
    "item", "tolist", "cpu", "numpy", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive",
    "__bool__", "__int__", "__float__", "__index__", "__complex__", "is_nonzero", "equal", "allclose",
}


class no_host_sync(TorchFunctionMode):
    """Raise `HostSyncError` on any tensor operation that synchronises host and device.

    Flags reading a tensor's value on the host (`.item()`, `bool()`, `int()`, `float()`,
    `.tolist()`, `.cpu()`, `.numpy()`, `torch.equal`/`allclose`), operations whose output shape
    depends on values (`nonzero`, `masked_select`, `unique`, indexing with a boolean mask),
    indexed assignment of a Python value (`x[0] = 1.0` copies a CPU scalar to the device), and
    copies to the CPU (`.to("cpu")`). Works on any device (it intercepts the calls through
    `torch.overrides.TorchFunctionMode`), so a test on a CPU-only machine proves a loop would
    not stall a GPU; on CUDA, `torch.cuda.set_sync_debug_mode("error")` is the runtime check.

    Usage: `with no_host_sync(): planner_search(...)`.

    Raises:
        HostSyncError: naming the operation, on the first such call inside the block.
    """

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _SYNCING:
            raise HostSyncError(f"host synchronisation inside a capture-ready loop: {name}")
        if name == "__getitem__" and len(args) > 1 and _has_bool_mask(args[1]):
            raise HostSyncError("host synchronisation inside a capture-ready loop: indexing with a boolean mask")
        if name == "__setitem__" and len(args) > 2 and (_has_bool_mask(args[1]) or not isinstance(args[2], Tensor)):
            # x[i] = 1.0 copies a CPU scalar to the device: a host sync on CUDA, an error in a capture
            raise HostSyncError(
                "host synchronisation inside a capture-ready loop: indexed assignment of a Python value "
                "(or through a boolean mask); use torch.where / clamp / a device tensor"
            )
        if name == "to" and args and isinstance(args[0], Tensor) and args[0].device.type != "cpu":
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
                raise HostSyncError("host synchronisation inside a capture-ready loop: copy to the CPU")
        return func(*args, **kwargs)


def _has_bool_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


# ---------------------------------------------------------------------------------------- objectives
def _term_key(term: Any) -> Any:
    if isinstance(term, BoundReward):
        return _term_key(term.term)
    if isinstance(term, LearnedReward):
        return ("learned",)
    if isinstance(term, ScaledReward):
        return ("scaled", term.weight, _term_key(term.term))
    if isinstance(term, SumReward):
        return ("sum", tuple(_term_key(t) for t in term.terms))
    if isinstance(term, (UserReward, Reward)):
        return ("term", id(term))
    return ("callable", id(term))


def _value_key(name: str, v: Any) -> Any:
    if isinstance(v, Shared):
        return ("shared", _value_key(name, v.value))
    if isinstance(v, Tensor):
        return ("tensor", tuple(v.shape), v.dtype, v.device)
    if v is None or isinstance(v, (bool, int, float, complex, str)):
        return ("value", type(v).__name__, v)
    raise ValueError(
        f"captured planning: context[{name!r}] is a {type(v).__name__}; a captured graph can only take "
        "tensors (copied into static buffers each call) and plain numbers or strings (part of the "
        "capture's key) as context values"
    )


def objective_key(objective: Objective) -> tuple:
    """What a captured search depends on besides its tensor inputs: the model and value objects,
    the reward terms' structure (user terms by identity, learned and scaled/summed terms by
    structure, so `0.5 * learned_reward()` built anew each call is the same key), the discount,
    the terminal and continuation terms (as the reward terms), and the context's keys with tensor
    shapes or plain values (a plain number is part of the key: one that changes every call
    recaptures every call; pass it as a 0-dim tensor instead).

    Raises:
        ValueError: a context value is neither a tensor nor a plain number/string (e.g. a list
            of tensors), which a captured graph could not refresh.
    """
    ctx = tuple(sorted((k, _value_key(k, v)) for k, v in objective.context.values.items()))
    return (
        id(objective.model), tuple(_term_key(t) for t in objective.rewards), objective.discount,
        id(objective.value), ctx, objective.context.batch,
        None if objective.terminal is None else _term_key(objective.terminal),
        None if getattr(objective, "continuation", None) is None else _term_key(objective.continuation),
    )


class StaticObjective:
    """An `Objective` rebuilt over static copies of another's context tensors.

    A captured graph reads every tensor at the address it had during capture; the context
    tensors of a new `Objective` live elsewhere. `StaticObjective(objective, device).objective`
    is an equivalent objective (same model, reward terms, discount, value, terminal and continuation
    terms, batch) whose context
    tensors are device copies owned here; `load(other)` copies another objective's context values
    (same `objective_key`) into them before a replay.
    """

    def __init__(self, objective: Objective, device: torch.device) -> None:
        terms = [t.term if isinstance(t, BoundReward) else t for t in objective.rewards]
        self._tensors: dict[str, Tensor] = {}
        context: dict[str, Any] = {}
        for k, v in objective.context.values.items():
            inner = v.value if isinstance(v, Shared) else v
            if isinstance(inner, Tensor):
                inner = inner.detach().to(device).clone()
                self._tensors[k] = inner
                v = Shared(inner) if isinstance(v, Shared) else inner
            context[k] = v
        self.objective = Objective(
            objective.model, rewards=terms, discount=objective.discount, value=objective.value,
            context=context, batch=objective.context.batch,
            terminal=None if objective.terminal is None else objective.terminal.term,
            continuation=objective.continuation,
        )

    def load(self, objective: Objective) -> None:
        """Copy `objective`'s context tensors into the static ones (no reallocation)."""
        for k, buf in self._tensors.items():
            v = objective.context.values[k]
            buf.copy_(v.value if isinstance(v, Shared) else v)


# ---------------------------------------------------------------------------------------- runners
class CapturedSearch:
    """One planner search with static shapes, run on static input buffers: replayed from a CUDA
    graph (`"cuda_graph"`), compiled (`"torch_compile"`) or called as is (`"static"`).

    Args:
        fn: `fn(inputs: dict[str, Tensor]) -> dict[str, Tensor]`, capture-ready (static shapes,
            no host synchronisation, randomness from `generator` only).
        inputs: example inputs; their shapes, dtypes and devices are fixed from now on.
        mode: `"static"`, `"cuda_graph"` or `"torch_compile"`.
        generator: the generator `fn` draws from (`None`: the device's default generator). A
            CUDA graph registers it, so each replay draws fresh numbers from its current state
            and advances it exactly as the uncaptured call would.
        refresh: called before every call/replay (e.g. `FusedRSSM.refresh`, to pick up new
            weights: a replay runs no Python).

    Capture warms `fn` up twice on a side stream (lazy initialisations must not be recorded) and
    restores the generator's state afterwards, so capturing consumes no randomness.

    Calling returns fresh copies of the outputs: `runner(inputs) -> dict[str, Tensor]`.
    """

    def __init__(
        self, fn: Callable[[dict[str, Tensor]], dict[str, Tensor]], inputs: dict[str, Tensor], mode: str,
        *, generator: torch.Generator | None, refresh: Callable[[], Any] | None = None,
    ) -> None:
        if mode not in ("static", "cuda_graph", "torch_compile"):
            raise ValueError(f"CapturedSearch: mode must be 'static', 'cuda_graph' or 'torch_compile'; got {mode!r}")
        self.mode = mode
        self.refresh = refresh
        self.static = {k: v.detach().clone() for k, v in inputs.items()}
        self.graph: Any = None
        self.counts: dict[str, int] = {}  # Python-side facts of the search (iterations, model_evals)
        self.verified = False  # set by check_first_replay
        self.keepalive: tuple = ()  # objects the capture reads that its key names only by id()
        self._out: dict[str, Tensor] | None = None
        self._fn = fn
        if mode == "torch_compile":
            self._fn = torch.compile(fn, dynamic=False)
        elif mode == "cuda_graph":
            self._capture(fn, generator)

    def _capture(self, fn: Callable, generator: torch.Generator | None) -> None:
        self.device = device = next(iter(self.static.values())).device
        with torch.cuda.device(device):  # the graph, its stream and the default generator of *this* GPU
            gen = generator if generator is not None else torch.cuda.default_generators[torch.cuda.current_device()]
            saved = gen.get_state()
            try:
                if self.refresh is not None:
                    self.refresh()
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # lazy initialisations (cuBLAS/cuFFT plans, optimiser state) happen here
                        fn(self.static)
                torch.cuda.current_stream(device).wait_stream(side)
                gen.set_state(saved)
                self.graph = torch.cuda.CUDAGraph()
                if generator is not None:
                    self.graph.register_generator_state(generator)
                # thread_local: a controller captures in its planning thread while the main thread
                # keeps filtering observations
                with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device), capture_error_mode="thread_local"):
                    self._out = fn(self.static)
            finally:
                gen.set_state(saved)  # capturing consumes no randomness, even when it fails

    def __call__(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        for k, v in inputs.items():
            self.static[k].copy_(v)
        if self.refresh is not None:
            self.refresh()
        if self.graph is not None:
            with torch.cuda.device(self.device):
                self.graph.replay()
            out = self._out
        else:
            out = self._fn(self.static)
        return {k: v.clone() for k, v in out.items()}


class CaptureCache:
    """A small LRU cache of `CapturedSearch`es (with their `StaticObjective`s), keyed by what a
    capture depends on. Capturing costs a few plan calls; a control loop that keeps its model,
    reward terms, value and generator replays the same graph every step.

    A planner holds one; it is an optimisation, not planning state: every plan call's result is
    a function of its inputs alone.

    Args:
        size: how many captures to keep (the least recently used is dropped).
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, tuple[CapturedSearch, StaticObjective]] = OrderedDict()
        self.failed: str | None = None

    def fall_back(self, planner: str, requested: str, error: Exception) -> str:
        """After a failed capture: re-raise `error` if the mode was asked for explicitly; under
        `compile="auto"`, warn once, remember the failure (`failed`, so later calls of this planner
        go straight to the eager loop) and return `"eager"`."""
        if requested != "auto":
            raise error
        self.failed = f"an earlier capture failed ({type(error).__name__}: {error})"
        warnings.warn(f"{planner}: compile='auto' could not capture the search; planning eagerly from now on. "
                      f"{self.failed}", RuntimeWarning, stacklevel=3)
        return "eager"

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, key: tuple, build: Callable[[], tuple[CapturedSearch, StaticObjective]]
    ) -> tuple[CapturedSearch, StaticObjective]:
        """The entry for `key`, built with `build()` on a miss."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        entry = build()
        self._entries[key] = entry
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        """Drop every capture (e.g. to free GPU memory)."""
        self._entries.clear()


def capture_key(mode: str, objective: Objective, generator: torch.Generator | None, inputs: dict[str, Tensor], *extra: Any) -> tuple:
    """The cache key of one captured search: mode, objective structure, generator identity,
    input shapes/dtypes/devices, and planner-specific `extra`."""
    shapes = tuple(sorted((k, tuple(v.shape), v.dtype, v.device) for k, v in inputs.items()))
    return (mode, objective_key(objective), id(generator), shapes, torch.is_grad_enabled(), *extra)


SearchBuilder = Callable[[Objective, dict[str, int]], Callable[[dict[str, Tensor]], dict[str, Tensor]]]


def run_captured(
    cache: CaptureCache, mode: str, objective: Objective, inputs: dict[str, Tensor], build_search: SearchBuilder,
    eager: Callable[[], dict[str, Tensor]], *, generator: torch.Generator | None, planner: str,
    key_extra: tuple = (), keepalive: tuple = (), atol: float = 1e-4,
) -> tuple[dict[str, Tensor], CapturedSearch]:
    """Run one planner search in a captured mode: look the capture up in `cache` (building it on a
    miss), load the objective's context into it, and replay it; a new capture's first call is
    checked against the eager loop (`check_first_replay`).

    Args:
        cache: the planner's `CaptureCache`.
        mode: `"static"`, `"cuda_graph"` or `"torch_compile"` (from `resolve_compile`).
        objective: the caller's objective (its structure is part of the key; its context
            tensors are copied into the capture's static ones before every call).
        inputs: the search's tensor inputs (beliefs `[B, ...]`, sampling distributions or start
            sequences); shapes, dtypes and devices are part of the key.
        build_search: `build_search(static_objective, counts) -> search`, where
            `search(static_inputs) -> dict[str, Tensor]` is the capture-ready search over the
            static objective; it may record Python-side facts (iterations, model_evals) in
            `counts`, which the runner keeps as `runner.counts`.
        eager: the eager loop's outputs on the caller's inputs, for the first-replay check (the
            keys it returns are the ones compared).
        generator: the search's randomness (`None`: the device's default generator).
        planner: the planner's name, for messages.
        key_extra: planner-specific parts of the cache key (e.g. a proposal's `id()`).
        keepalive: objects the key names only by `id()`, kept alive with the capture.
        atol: tolerance of the first-replay check.

    Returns:
        `(outputs, runner)`: the search's outputs (fresh copies) and its `CapturedSearch`.

    Raises:
        CaptureMismatch: a new capture did not reproduce the eager plan.
        ValueError: from `objective_key` on a context value a capture cannot refresh.
    """
    device = next(iter(inputs.values())).device
    key = capture_key(mode, objective, generator, inputs, *key_extra)

    def build() -> tuple[CapturedSearch, StaticObjective]:
        static_obj = StaticObjective(objective, device)
        counts: dict[str, int] = {}
        search = build_search(static_obj.objective, counts)
        runner = CapturedSearch(search, inputs, mode, generator=generator, refresh=static_obj.objective.model.refresh)
        runner.counts = counts
        runner.keepalive = keepalive
        return runner, static_obj

    runner, static_obj = cache.get(key, build)
    static_obj.load(objective)
    if runner.verified or mode == "torch_compile":  # compiled code may round differently
        return runner(inputs), runner
    return check_first_replay(runner, inputs, eager, generator, device, planner=planner, atol=atol), runner
