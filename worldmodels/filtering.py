"""Filtering stored episodes through a world model: the posterior belief at every step."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from .state import LatentState, WorldModel

__all__ = ["filter_episodes"]


@torch.no_grad()
def filter_episodes(
    model: WorldModel,
    episodes: Iterable[Mapping[str, np.ndarray]] | Any,
    *,
    generator: torch.Generator | None = None,
    include_last: bool = True,
    max_batch: int | None = None,
) -> tuple[LatentState, Tensor]:
    """Run `model.observe` along every episode from `initial`: the beliefs an agent had.

    Episodes of the same length are filtered together (in groups of at most `max_batch`, in the
    order their lengths first appear); the belief after observing `obs[t]` is the one an agent
    planned from at decision t.

    Args:
        model: the world model.
        episodes: a `ReplayBuffer` (its `.episodes`) or a sequence of episode dicts with
            `obs [T+1, ...]`, `action [T+1, A]`, `is_first [T+1]` (the replay format,
            `latentplan.worldmodels.Episode`).
        generator: randomness of the posterior samples.
        include_last: keep the belief after the final observation (where no decision is made);
            without it each episode gives T beliefs and the last observation is not filtered.
        max_batch: episodes filtered together at most (`None`: all of one length at once).

    Returns:
        `(beliefs, episode_index)`: `beliefs` `[R]` with the rows of each episode contiguous, in
        time order and in episode order (R = sum over episodes of T + 1, or T without
        `include_last`), and `episode_index` `[R]` int64, the episode each row comes from.

    Raises:
        ValueError: an episode lacks `obs`, `action` or `is_first`; from `model.observe` on
            observations that do not fit.

    Source: the posterior (filtering) pass of PlaNet's RSSM (Hafner et al. 2019, Sec. 3) over
    stored episodes.
    """
    eps = list(getattr(episodes, "episodes", episodes))
    for i, e in enumerate(eps):
        missing = [k for k in ("obs", "action", "is_first") if k not in e]
        if missing:
            raise ValueError(f"filter_episodes: episode {i} lacks {missing}")
    dev = model.action_low.device
    out: list[LatentState | None] = [None] * len(eps)
    by_len: dict[int, list[int]] = {}
    for i, e in enumerate(eps):
        by_len.setdefault(len(e["action"]), []).append(i)
    for length, idxs in by_len.items():
        steps = length if include_last else length - 1
        if steps < 1:  # a one-row episode without its last belief: nothing to filter
            for i in idxs:
                out[i] = model.initial(0)
            continue
        size = max_batch or len(idxs)
        for s in range(0, len(idxs), size):
            group = idxs[s : s + size]
            obs = torch.as_tensor(np.stack([np.asarray(eps[i]["obs"]) for i in group]), device=dev)
            act = torch.as_tensor(np.stack([np.asarray(eps[i]["action"]) for i in group]), dtype=model.action_low.dtype,
                                  device=dev)  # the model's dtype: a float64 model filters in float64
            first = torch.as_tensor(np.stack([np.asarray(eps[i]["is_first"]) for i in group]), device=dev)
            state = model.initial(len(group))
            deters, stochs = [], []
            for t in range(steps):
                state = model.observe(state, act[:, t], obs[:, t], first[:, t], generator=generator)
                deters.append(state.deter)
                stochs.append(state.stoch)
            deter = torch.stack(deters, 1)  # [G, steps, D]
            stoch = torch.stack(stochs, 1)
            for j, i in enumerate(group):
                out[i] = LatentState(deter[j], stoch[j])
    if not eps:
        return model.initial(0), torch.zeros(0, dtype=torch.int64, device=dev)
    beliefs = LatentState.cat([o for o in out if o is not None])
    index = torch.cat([torch.full((o.batch,), i, dtype=torch.int64) for i, o in enumerate(out)])
    return beliefs, index.to(dev)
