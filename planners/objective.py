"""What every planner maximises: the discounted return of an imagined rollout plus a bootstrap value."""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState, WorldModel

from .base import callable_name
from .rewards import (
    BoundReward, Reward, RewardContext, UserReward, check_continuation_output, check_reward_output, continuation,
    learned_reward, reward,
)

__all__ = ["Continuation", "Objective", "PriorMeanModel", "RewardTerm", "discounted", "rank_returns"]

RewardTerm = Callable[[LatentState, Tensor], Tensor]
"""The internal reward-term signature: `(next_state [N], action [N, A]) -> reward [N]` (the reward
of taking `action` and arriving in `next_state`). `Objective.rewards` holds such callables: the
`BoundReward` of every `Reward` it was given, and plain callables as they were given."""


Continuation = Callable[[LatentState, Tensor], Tensor]
"""The internal continuation signature: `(next_state [N], action [N, A]) -> c [N]` in [0, 1] (or bool),
the probability that the episode continues after taking `action` and arriving in `next_state`.
`Objective.continuation` holds the `BoundReward` of an `@lp.continuation` term, or a plain callable
as it was given."""


class PriorMeanModel:
    """A view of a world model that imagines with the prior means: `imagine_step` and `rollout`
    always pass `sample=False`; every other attribute is the wrapped model's.

    Used through `Objective.with_prior_means()` by the planners that optimise a deterministic
    path through a stochastic model (`GradientConfig(use_mean=True)`, `ILQR`). On a model without a
    stochastic part it changes nothing.

    Args:
        model: any `WorldModel` whose `imagine_step` / `rollout` take `sample=`.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> LatentState:
        """The wrapped model's prior step with `sample=False` (`sample` is ignored)."""
        return self._model.imagine_step(state, action, generator=generator, sample=False)

    def rollout(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[LatentState, LatentState]:
        """The wrapped model's rollout with `sample=False` (`sample` is ignored)."""
        return self._model.rollout(state, actions, generator=generator, sample=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _takes_positional(fn: Callable, count: int) -> bool:
    """Whether `fn` can be called with `count` positional arguments (True when its signature is
    not introspectable, e.g. some builtins)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(*([None] * count))
    except TypeError:
        return False
    return True


def _check_value(value: object) -> None:
    if value is None:
        return
    if isinstance(value, (Reward, BoundReward)):
        raise TypeError(
            f"Objective: value= must be a value function state -> [N] (e.g. a ValueFunction); got the reward "
            f"term {callable_name(value)!r}: a reward on the final state goes in terminal= "
            "(@lp.reward(stage='terminal')), per-step terms in rewards=[...]"
        )
    if not callable(value) or not _takes_positional(value, 1):
        raise TypeError(
            f"Objective: value= must be a callable state -> [N] taking one LatentState (e.g. a ValueFunction); "
            f"got {value!r:.80}"
        )


def _check_term(term: object, index: int) -> None:
    where = f"Objective: rewards[{index}]"
    if isinstance(term, Reward) or isinstance(getattr(term, "term", None), Reward):
        inner = term if isinstance(term, Reward) else term.term
        if inner.is_continuation:
            raise TypeError(
                f"{where} {inner.name!r} is a continuation term (the probability that the episode goes on): "
                "pass it as Objective(continuation=...)"
            )
    if isinstance(term, Reward):
        if term.is_terminal:
            raise TypeError(
                f"{where} {term.name!r} is a stage='terminal' term (a reward on the final state): "
                "pass it as Objective(terminal=...)"
            )
        return
    if not callable(term):
        raise TypeError(
            f"{where} must be a reward term (an @lp.reward function, lp.learned_reward(), or a callable "
            f"(next_state, action) -> [N]); got {term!r:.80}"
        )
    if term is learned_reward:
        raise TypeError(f"{where} is the function lp.learned_reward itself: call it, rewards=[lp.learned_reward()]")
    if term is reward or term is continuation or getattr(term, "__qualname__", "") in (
            "reward.<locals>.wrap", "continuation.<locals>.wrap"):
        raise TypeError(
            f"{where} is the decorator {callable_name(term)!r}, not a term: apply it to your function "
            "(@lp.reward(...) above def fn(obs, action, ctx)) and pass the function"
        )
    if not isinstance(term, BoundReward) and not _takes_positional(term, 2):
        raise TypeError(
            f"{where} {callable_name(term)!r} cannot be called as (next_state, action): a plain callable takes "
            "exactly those two; wrap fn(obs, action, ctx) with @lp.reward"
        )


def _check_terminal(terminal: object) -> None:
    if terminal is None:
        return
    if not isinstance(terminal, Reward):
        raise TypeError(
            "Objective: terminal= must be a reward term on the final state, made with "
            "@lp.reward(stage='terminal') (or lp.learned_reward(), or a composition of them); "
            f"got {terminal!r:.80} (a plain callable state -> [N] is a value=)"
        )
    if terminal.is_continuation:
        raise TypeError(
            f"Objective: terminal= {terminal.name!r} is a continuation term (the probability that the episode "
            "goes on), not a reward on the final state: pass it as Objective(continuation=...)"
        )
    wrong = [leaf.name for leaf in terminal.leaves() if leaf.stage != "terminal" and leaf.name != "learned_reward"]
    if wrong:
        raise TypeError(
            f"Objective: terminal= {terminal.name!r} has per-step parts {wrong} (they take an action): "
            "mark a reward on the final state @lp.reward(stage='terminal'), fn(obs, ctx) -> [N]"
        )


def _check_continuation(term: object) -> None:
    if term is None:
        return
    inner = term.term if isinstance(term, BoundReward) else term
    if isinstance(inner, Reward):
        if not (isinstance(inner, UserReward) and inner.stage == "continuation"):
            stages = sorted({leaf.stage for leaf in inner.leaves()})
            raise TypeError(
                f"Objective: continuation= {inner.name!r} is a reward term (stage {'/'.join(stages)}); a "
                "continuation is the probability in [0, 1] that the episode goes on after a step: mark the "
                "function @lp.continuation (fn(obs, action, ctx) -> [N] float in [0, 1] or bool), or give a "
                "callable (next_state, action) -> [N]"
            )
        return
    if isinstance(term, (bool, int, float)) or not callable(term):
        raise TypeError(
            "Objective: continuation= must be an @lp.continuation term (fn(obs, action, ctx) -> [N] float in "
            f"[0, 1] or bool) or a callable (next_state, action) -> [N]; got {term!r:.80}"
        )
    if not _takes_positional(term, 2):
        raise TypeError(
            f"Objective: continuation= {callable_name(term)!r} cannot be called as (next_state, action): a plain "
            "callable takes exactly those two; wrap fn(obs, action, ctx) with @lp.continuation"
        )


def discounted(x: Tensor, weight: Tensor | float) -> Tensor:
    """`x * weight`, with the rows whose weight is exactly 0 set to 0 whatever `x` holds there.

    Rewards and bootstraps after a terminal step have weight 0 (gamma^t times a continuation
    product that reached 0); they do not count, even if they are NaN or inf (0 * inf would be
    NaN), and no NaN reaches a gradient through them.

    Args:
        x: `[N]` (or any shape) rewards or bootstrap values.
        weight: broadcastable weights (a tensor or a float).

    Returns:
        `x * weight` where `weight != 0`, else 0.
    """
    if not isinstance(weight, Tensor):
        return x * weight if weight != 0 else torch.zeros_like(x)
    alive = weight != 0
    return torch.where(alive, x, torch.zeros_like(x)) * weight


def rank_returns(returns: Tensor) -> tuple[Tensor, Tensor]:
    """Make returns safe to rank: NaN and +-inf become `-inf` (never 0).

    Args:
        returns: `[N]` (or any shape) returns.

    Returns:
        `(ranked, nonfinite)`: the returns with non-finite entries set to `-inf`, and the number
        of such entries as a 0-dim integer tensor (no host synchronisation).
    """
    finite = torch.isfinite(returns)
    ranked = torch.where(finite, returns, torch.full_like(returns, float("-inf")))
    return ranked, (~finite).sum()


class Objective:
    """The planning objective over one world model: sum_t gamma^t C_t r_t + gamma^H C_H (V + T)(s_H), C_t = prod_{k<t} c_k.

    Built once per plan call. The reward r_t is the sum of the reward terms: the learned reward
    head by default, or user terms (`@reward` functions of decoded quantities or of the latent,
    `learned_reward()`, and their compositions such as `upright + 0.5 * learned_reward()`), or
    plain callables `(next_state [N], action [N, A]) -> [N]`.

    Every `Reward` is bound at construction to one `RewardContext` (this model, `context`,
    `batch`), so `objective.rewards` holds callables with the internal signature; each keeps the
    `name` and `differentiable` attributes of its term (gradient planners check
    `getattr(term, "differentiable", True)`). Plain callables are kept as they are.

    Context: per plan call, `context` maps names to Python scalars, 0-dim tensors, or per
    environment tensors `[B, ...]` (or `[1, ...]`, shared). Planners evaluate `N = B * J` rows,
    row `b * J + j` for environment b; each `[B, ...]` value reaches the reward functions as
    `[N, ...]` (`repeat_interleave(N // B)`). B is not inferred: give `batch=B` whenever a
    context tensor's leading dimension is not 1. Details: `RewardContext`.

    Args:
        model: any `WorldModel`.
        rewards: a list of terms (each a `Reward` or a plain callable), or one term;
            `None` means `[learned_reward()]`, the model's learned reward head; `[]` means no
            per-step reward (only the terminal `value` counts).
        discount: gamma per planning step (PlaNet: 1.0, an undiscounted sum).
        value: optional terminal value `V(state) -> [N]`, added at the horizon as gamma^H V(s_H)
            (a learned critic such as `ValueFunction`, or any callable of one `LatentState`).
        terminal: optional reward term on the final state, `@lp.reward(stage="terminal")`
            (`fn(obs, ctx) -> [N]`), `lp.learned_reward()`, or a composition of them; added at
            the horizon as gamma^H T(s_H), beside `value` (the bootstrap is V + T). Planners reach
            it through `returns` and `bootstrap`.
        context: the reward context (see above); `None` is empty.
        batch: B, the number of environments the plan call is for (needed for `[B, ...]`
            context values); planners refuse beliefs of another B (`check_rows`).
        continuation: optional term giving, per imagined step, the probability c_t in [0, 1]
            that the episode continues after the step s_t --a_t--> s_{t+1} (Dreamer's continue
            predictor; MuZero-style terminal flags): an `@lp.continuation` function
            `fn(obs, action, ctx) -> [N]` of the decoded arrival state (or of the latent, with
            `inputs="latent"`), or a plain callable `(next_state [N], action [N, A]) -> [N]`.
            Either may return floats in [0, 1] or a bool tensor (True = not done). `None`: the
            episode never ends inside the horizon (every c_t = 1, the return as without it).

    The return is

        sum_{t<H} gamma^t (prod_{k<t} c_k) r_t + gamma^H (prod_{k<H} c_k) (V(s_H) + T(s_H)),

    with r_t the per-step terms of step t (`stage="arrival"` terms read s_{t+1};
    `stage="transition"` terms read s_t and s_{t+1}) and c_k the continuation of step k (1 for
    every k without `continuation`). **The step that ends the episode counts its reward**: if
    c_t = 0, r_t (the reward of the transition into the terminal state s_{t+1}) is in the return
    with weight gamma^t prod_{k<t} c_k, and every later reward r_{t+1}, ..., r_{H-1} and the
    bootstrap V + T have weight 0 (they are left out, NaN or inf included: `discounted`). A
    soft c_t in (0, 1) weighs what follows by the probability of getting there (the expected
    return under independent continuation draws, as Dreamer's imagined returns).

    Dtype: the return has the model state's dtype; user terms' outputs are cast to it and
    floating context tensors are cast to it before the functions see them (`RewardContext`).

    Raises:
        ValueError: `discount` is not in (0, 1]; a context value's leading dimension is neither
            1 nor B (or is not 1 without `batch`), naming the key (here). In `step`/`returns`:
            a reward term returns a tensor that is not `[N]` or lives on another device
            (the message names the term). In `returns` (and every planner's `plan`): beliefs
            whose count is not a multiple of (in `plan`: not equal to) `batch`, naming both.
            At evaluation, naming the term: an `@lp.reward` function modified an input in place
            (a state, a decoded quantity, the action or a context value), or a term marked
            differentiable returned an output without gradient while a gradient planner
            differentiates it (`NoGradientError`, see `check_reward_gradient`).
        TypeError (here, naming the argument): a `rewards` item is not callable, is a plain
            callable that cannot take `(next_state, action)` (the function `learned_reward` or
            the decorator `reward` itself get their own hint), is a `stage="terminal"` term, or
            needs a model method (`decode`, `reward`) the model lacks; `value` is a reward term
            or not a callable of one state; `terminal` is not a `Reward` of terminal-stage parts
            (or `learned_reward()`). A term returns a non-tensor or a non-floating tensor (in
            `step`/`returns`, naming the term). `continuation` is not an `@lp.continuation` term
            or a callable of `(next_state, action)`, or a continuation term is given as a reward
            or terminal term (here). In `transition`/`returns`/`continues`: the continuation's
            output is not a bool or floating `[N]` tensor on the action's device with values in
            [0, 1] (`TypeError` / `ValueError` naming the term; `check_continuation_output`).

    NaN or inf from a reward is not an error: it propagates to the return, which planners rank
    as `-inf` (`rank_returns`) and count in `Plan.info["nonfinite"]`.

    Source: the return of PlaNet's planner (Hafner et al. 2019, Sec. 3); the bootstrap as in
    MuZero / TD-MPC; the continuation as Dreamer's discount predictor (Hafner et al. 2021,
    DreamerV2, Sec. 2: imagined returns weighted by the cumulative product of predicted
    discounts) and MuZero's terminal states; user reward terms: docs/rewards.md.
    """

    def __init__(
        self,
        model: WorldModel,
        *,
        rewards: Sequence[RewardTerm | Reward] | RewardTerm | Reward | None = None,
        discount: float = 1.0,
        value: Callable[[LatentState], Tensor] | None = None,
        context: Mapping[str, Any] | None = None,
        batch: int | None = None,
        terminal: Reward | None = None,
        continuation: Continuation | Reward | None = None,
    ) -> None:
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"Objective: discount must be in (0, 1]; got {discount}")
        _check_value(value)
        _check_terminal(terminal)
        _check_continuation(continuation)
        self.model = model
        self.context = RewardContext(model, context, batch=batch)
        if rewards is None:
            terms: list = [learned_reward()]
        elif isinstance(rewards, Reward) or callable(rewards):
            terms = [rewards]
        elif isinstance(rewards, (list, tuple)):
            terms = list(rewards)
        else:
            raise TypeError(
                "Objective: rewards must be a reward term (a callable such as @lp.reward or lp.learned_reward()), "
                f"a list of them, or None; got {type(rewards).__name__} {rewards!r:.80}"
            )
        for i, t in enumerate(terms):
            _check_term(t, i)
        self.rewards: list[RewardTerm] = [self.context.bind(t) for t in terms]
        self.discount = float(discount)
        self.value = value
        self.terminal: BoundReward | None = None if terminal is None else self.context.bind(terminal)
        if isinstance(continuation, BoundReward):
            continuation = continuation.term  # bound anew to this objective's context
        self.continuation: Continuation | None = None if continuation is None else self.context.bind(continuation)

    def __repr__(self) -> str:
        names = [callable_name(t) for t in self.rewards]
        terminal = None if self.terminal is None else self.terminal.name
        cont = None if self.continuation is None else callable_name(self.continuation)
        return (
            f"Objective(rewards={names}, discount={self.discount}, value={self.value is not None}, "
            f"terminal={terminal!r}, continuation={cont!r}, "
            f"context={list(self.context.values)}, batch={self.context.batch})"
        )

    @property
    def differentiable(self) -> bool:
        """False if any reward term (or the value, the terminal term, or the continuation) is marked
        `differentiable = False`."""
        parts = [*self.rewards, *(t for t in (self.value, self.terminal, self.continuation) if t is not None)]
        return all(getattr(t, "differentiable", True) is not False for t in parts)

    @property
    def terminates(self) -> bool:
        """True if the objective has a `continuation` term: an episode may end inside the horizon."""
        return self.continuation is not None

    @property
    def bootstraps(self) -> bool:
        """True if the return has a horizon part: a `value`, a `terminal` term, or both."""
        return self.value is not None or self.terminal is not None

    @property
    def needs_prev(self) -> bool:
        """True if a reward term reads the state before the action (`stage="transition"`)."""
        return any(getattr(t, "needs_prev", False) for t in self.rewards)

    @property
    def action_dim(self) -> int:
        """A, the model's action dimension."""
        return self.model.action_dim

    def with_prior_means(self, state: LatentState | None = None) -> "Objective":
        """This objective with its model imagining at the prior means (`PriorMeanModel`): a shallow
        copy, the reward terms, context and value shared. Returns `self` when `state` is given and
        has no stochastic part (`state.stoch` is `[N, 0]`: the samples are the means already)."""
        if state is not None and state.stoch.shape[1] == 0:
            return self
        view = copy.copy(self)
        view.model = PriorMeanModel(self.model)
        return view

    def check_rows(self, n: int, where: str = "Objective") -> None:
        """Check that `n` rows (beliefs) fit the B this objective was built for (`batch=`): planners
        evaluate N = B * J rows, row `b * J + j` for environment b, so N must be a multiple of B. An
        O(1) check on integers, run once per `returns` call (and, as B == state.batch, once per
        plan call by every planner, `validate.check_plan_inputs`).

        Raises:
            ValueError: `batch` was given and `n` is not a multiple of it (the message names both).
        """
        b = self.context.batch
        if b is not None and n % b:
            raise ValueError(
                f"{where}: the objective was built for batch={b} environments but is evaluated on N={n} beliefs, "
                f"not a multiple of {b} (planners evaluate N = B * J rows, row b*J + j for environment b); "
                "build the Objective with the B of the beliefs you plan from"
            )

    def stage_reward(self, next_state: LatentState, action: Tensor, prev_state: LatentState | None = None) -> Tensor:
        """`[N]` the undiscounted stage reward: the sum of the reward terms for
        `prev_state [N]` --`action [N, A]`--> `next_state [N]` (`prev_state` is read by transition
        terms only; they raise without it). `returns` discounts and sums these over the horizon;
        `ILQR` differentiates them twice (`torch.func`).

        Raises:
            TypeError / ValueError: a term's output is not a floating `[N]` tensor (naming it).
            ValueError: an `@lp.reward` function modified its inputs in place, or a term marked
                differentiable returned an output without gradient while gradients are taken
                (`check_reward_gradient`), naming the term. Plain callables are checked for
                their output only (a constant spy or placeholder stays allowed).
        """
        total = None
        n = action.shape[0]
        for term in self.rewards:
            if isinstance(term, BoundReward):  # bound terms check each user function's output
                r = term(next_state, action, prev_state)
            else:
                r = check_reward_output(term(next_state, action), callable_name(term), n, action.device)
            total = r if total is None else total + r
        return torch.zeros(n, device=action.device, dtype=next_state.deter.dtype) if total is None else total

    def continues(self, next_state: LatentState, action: Tensor) -> Tensor:
        """`[N]` c, the probability that the episode continues after taking `action [N, A]` and
        arriving in `next_state [N]`: the continuation term's output, checked and cast to the
        state's dtype (a bool output becomes 1.0 / 0.0); ones without a continuation.

        Raises:
            TypeError / ValueError: the output is not a bool or floating `[N]` tensor on the
                action's device with values in [0, 1] (naming the term; `check_continuation_output`).
        """
        n, dtype = action.shape[0], next_state.deter.dtype
        if self.continuation is None:
            return torch.ones(n, device=action.device, dtype=dtype)
        if isinstance(self.continuation, BoundReward):  # checked and cast inside (UserReward)
            return self.continuation(next_state, action)
        return check_continuation_output(
            self.continuation(next_state, action), callable_name(self.continuation), n, action.device, dtype
        )

    def step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[LatentState, Tensor]:
        """One imagined transition: `state [N]`, `action [N, A]` -> (next state, reward `[N]`).

        The continuation is not part of the result: planners that honour episode ends call
        `transition` (or `continues` on the next state).

        Raises:
            TypeError / ValueError: from the model's step on a state or action of the wrong type,
                shape, dtype or device (`check_step`); a reward term's output is not a floating
                `[N]` tensor (naming the term); a `[B, ...]` context value with N not a multiple of
                B (`RewardContext.expand`).
        """
        nxt = self.model.imagine_step(state, action, generator=generator)
        return nxt, self.stage_reward(nxt, action, state)

    def transition(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[LatentState, Tensor, Tensor]:
        """One imagined transition with its continuation: `state [N]`, `action [N, A]` ->
        (next state, reward `[N]`, continuation `[N]`), the continuation from `continues`
        (ones without a term). H calls give `returns` as
        `sum_t gamma^t (prod_{k<t} c_k) r_t + gamma^H (prod_{k<H} c_k) bootstrap(s_H)`.

        Raises:
            As `stage_reward` and `continues`.
        """
        nxt, r = self.step(state, action, generator=generator)
        return nxt, r, self.continues(nxt, action)

    def bootstrap(self, state: LatentState) -> Tensor:
        """`[N]` the horizon part V(state) + T(state) (`value` and `terminal`, each if given), or
        zeros (in the state's dtype) without either.

        Raises:
            ValueError: `value` does not return `[N]`; TypeError: `value` returns something that is
                not a floating tensor (a list, an int64 tensor; naming it); TypeError/ValueError:
                the terminal term's output is not a floating `[N]` tensor (naming it).
        """
        if not self.bootstraps:
            return torch.zeros(state.batch, device=state.device, dtype=state.deter.dtype)
        v = None
        if self.value is not None:
            v = self.value(state)
            if not isinstance(v, Tensor):
                raise TypeError(f"Objective: value {callable_name(self.value)!r} must return a floating tensor "
                                f"[N={state.batch}]; got {type(v).__name__}")
            if not v.is_floating_point():
                raise TypeError(f"Objective: value {callable_name(self.value)!r} must return a floating tensor "
                                f"[N={state.batch}]; got dtype {str(v.dtype).replace('torch.', '')} (cast with .float())")
            if v.shape != (state.batch,):
                raise ValueError(f"Objective: value must return [N={state.batch}]; got {tuple(v.shape)}")
        if self.terminal is not None:
            t = self.terminal(state, None)
            v = t if v is None else v + t
        return v

    def returns(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Discounted return of imagined rollouts.

        Args:
            state: `[N]` start beliefs (one per sequence).
            actions: `[N, H, A]` action sequences.
            generator: randomness of the model's stochastic transitions.

        Returns:
            `[N]` sum_{t<H} gamma^t (prod_{k<t} c_k) r_t + gamma^H (prod_{k<H} c_k) (V(s_H) + T(s_H)),
            c_k = 1 without a continuation (see the class: the reward of the step that ends the
            episode counts, nothing after it). Non-finite entries are left as they are;
            planners rank them with `rank_returns`.

        The model's `rollout(state, actions, generator=) -> (visited [N*H], final [N])` gives
        all H steps at once (`WorldModelBase` loops `imagine_step`; the RSSM's fused view does
        better), and the reward terms (and the continuation) see all `N * H` visited beliefs in
        one call. The result equals H calls of `transition` up to float summation order.

        Raises:
            ValueError: if `actions` is not `[N, H, A]` for this state and model; N is not a multiple
                of the `batch=` the objective was built for (naming both, `check_rows`); the
                continuation's output is not `[N * H]` in [0, 1] (naming the term).
        """
        n = state.batch
        if actions.dim() != 3 or actions.shape[0] != n or actions.shape[2] != self.action_dim:
            raise ValueError(
                f"Objective.returns: actions must be [N={n}, H, A={self.action_dim}]; got {tuple(actions.shape)}"
            )
        self.check_rows(n, "Objective.returns")
        h = actions.shape[1]
        if h > 0:
            # one batched reward call over all N * H visited beliefs (row n * H + t) instead of H
            # small ones: a `[B, ...]` context expands to these rows correctly, since the rows of
            # environment b are still one contiguous block
            start = state
            visited, state = self.model.rollout(state, actions, generator=generator)
            prev = None
            if self.needs_prev:  # row n * H + t: s_t, the start belief at t = 0
                prev = LatentState(*(
                    torch.cat([s[:, None], v.reshape(n, h, -1)[:, :-1]], dim=1).reshape(n * h, -1)
                    for s, v in ((start.deter, visited.deter), (start.stoch, visited.stoch))
                ))
            flat = actions.reshape(n * h, -1)
            r = self.stage_reward(visited, flat, prev).reshape(n, h)
            weights = self.discount ** torch.arange(h, device=actions.device, dtype=r.dtype)
            if self.continuation is None:
                total = (r * weights).sum(dim=1)
                scale: Tensor | float = self.discount**h
            else:  # weight of r_t: gamma^t prod_{k<t} c_k; of the bootstrap: gamma^H prod_{k<H} c_k
                c = self.continues(visited, flat).reshape(n, h)
                alive = torch.cumprod(torch.cat([torch.ones_like(c[:, :1]), c], dim=1), dim=1)  # [N, H + 1]
                total = discounted(r, weights * alive[:, :-1]).sum(dim=1)
                scale = self.discount**h * alive[:, -1]
        else:  # no step: only the value of the start
            total = torch.zeros(n, device=actions.device, dtype=state.deter.dtype)
            scale = 1.0
        if self.bootstraps:
            total = total + discounted(self.bootstrap(state), scale)
        return total


