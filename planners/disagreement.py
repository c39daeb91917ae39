"""Plan2Explore's intrinsic reward as a reward term: the disagreement of an ensemble of one-step
predictors (Sekar et al. 2020, "Planning to Explore via Self-Supervised World Models", Section 3).

```python
import latentplan as lp

explore = lp.disagreement(ensemble)                 # task-free exploration
directed = task + 0.1 * lp.disagreement(ensemble)   # a task with an exploration bonus
objective = lp.Objective(model, rewards=[directed])
```

The term is an ordinary `Reward` (it composes with `+` and scalar `*`, every planner evaluates it
through `Objective`), made with `reward(inputs="latent", ...)`. Its stage follows the ensemble's
`condition` (`worldmodels.ensemble.EnsembleConfig`): `"transition"` (the paper's, members read the
features of s_t and the action a_t) gives a `stage="transition"` term; `"arrival"` (members read
the deterministic state h_{t+1} of the arrival state) an arrival term, which iLQR accepts too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .rewards import UserReward, reward

__all__ = ["disagreement"]


def disagreement(ensemble: Any, *, name: str = "disagreement") -> UserReward:
    """The disagreement of `ensemble` as a reward term: `[N]` per imagined transition.

    Args:
        ensemble: a `PredictorEnsemble` (or any object with `disagreement(x [N, in_dim]) -> [N]`
            and `config.condition` in `{"transition", "arrival"}`), trained beside the world
            model (`latentplan.exploration`). With `"transition"` its input is
            `[prev_state.features(), action]` `[N, D + S + A]`; with `"arrival"` it is
            `next_state.deter` `[N, D]`.
        name: the term's name in expressions.

    Returns:
        A `UserReward` (`inputs="latent"`, differentiable: gradient planners ascend it through
        the members). The reward is the members' population variance averaged over the output
        dimensions; it is in the units of the predicted target squared.

    Raises:
        TypeError: `ensemble` has no `disagreement` method or no `config.condition`.
        ValueError: the condition is neither `"transition"` nor `"arrival"`; (at evaluation) the
            ensemble's `in_dim` does not match the model's features and action (`D + S + A`) or
            its deterministic state (`D`); the message gives both numbers. Inside an
            `MPCController` this, like any planner error, is logged and answered by the
            fallback (counted in `stats().planner_failures`).

    NaN or inf in the imagined states gives a NaN disagreement (not checked, to keep the planners'
    loops free of host synchronisation); planners rank NaN/inf returns last (`rank_returns`) and
    count them in `info["nonfinite"]`. Very large finite inputs can overflow to an inf reward,
    which is ranked last too.

    Source: Sekar et al. 2020, Section 3: the intrinsic reward is the variance of the ensemble's
    predicted means, averaged over the embedding's dimensions.
    """
    if not callable(getattr(ensemble, "disagreement", None)):
        raise TypeError(f"disagreement: expected a PredictorEnsemble (with .disagreement(x)); got {type(ensemble).__name__}")
    condition = getattr(getattr(ensemble, "config", None), "condition", None)
    if condition is None:
        raise TypeError("disagreement: the ensemble has no config.condition ('transition' or 'arrival')")
    in_dim = getattr(ensemble, "in_dim", None)

    def fits(got: int, what: str) -> None:
        # shapes are Python ints: checked on every call without a device synchronisation
        if in_dim is not None and got != in_dim:
            raise ValueError(f"disagreement: the ensemble reads in_dim = {in_dim} inputs, but this model gives {got} "
                             f"({what}); build the ensemble for this model (latentplan.exploration.build_ensemble)")

    if condition == "transition":

        def transition(prev: LatentState, state: LatentState, action: Tensor, ctx: dict) -> Tensor:
            features = prev.features()
            fits(features.shape[-1] + action.shape[-1],
                 f"features {features.shape[-1]} + action {action.shape[-1]}")
            return ensemble.disagreement(torch.cat([features, action], dim=-1))

        return reward(transition, inputs="latent", stage="transition", name=name)
    if condition == "arrival":

        def arrival(state: LatentState, action: Tensor, ctx: dict) -> Tensor:
            fits(state.deter.shape[-1], "the deterministic state's size D")
            return ensemble.disagreement(state.deter)

        return reward(arrival, inputs="latent", name=name)
    raise ValueError(f"disagreement: ensemble.config.condition must be 'transition' or 'arrival'; got {condition!r}")
