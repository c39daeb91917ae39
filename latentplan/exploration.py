"""Task-free training: Plan2Explore over PlaNet's loop, and the state-space coverage of the data.

Sekar, Rybkin, Daniilidis, Abbeel, Hafner, Pathak 2020, "Planning to Explore via Self-Supervised
World Models": an ensemble of K one-step predictors (`worldmodels.ensemble.PredictorEnsemble`) is
trained beside the world model on the same batches (its loss never reaches the RSSM: its inputs
and targets are detached); data is collected by planning for the ensemble's disagreement
(`planners.disagreement.disagreement`) alone. The env's reward is stored and the RSSM's reward
head is trained on it as usual, for later use, but it is never planned for while collecting.
Afterwards the explored model serves any reward: a known one written in torch (`@lp.reward`),
or the learned head (zero-shot).

    latentplan train --explore --run-dir runs/explore      # or lp.train(config, explore=True)

The run folder, checkpoints and `--resume` are the `Trainer`'s; the checkpoint also holds the
ensemble's weights and its optimiser (`ensemble`, `ensemble_optimizer`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentplan.planners.disagreement import disagreement
from latentplan.planners.objective import Objective
from latentplan.worldmodels.ensemble import EnsembleConfig, PredictorEnsemble
from latentplan.worldmodels.rssm import RSSMWorldModel
from latentplan.worldmodels.state import LatentState

from .config import TrainConfig
from .training import CheckpointMismatch, Trainer, load_checkpoint, read_run_checkpoint

__all__ = ["ExploreTrainer", "build_ensemble", "coverage", "load_explored", "make_trainer", "transition_pairs"]


def build_ensemble(config: EnsembleConfig, model: RSSMWorldModel, *, seed: int = 0) -> PredictorEnsemble:
    """The predictor ensemble for `model`: inputs `[D + S + A]` (`condition="transition"`) or `[D]`
    (`"arrival"`), outputs the embedding `[E]` (`target="embed"`) or the stochastic state `[S]`.

    Args:
        config: `EnsembleConfig`.
        model: the RSSM whose features and targets the members read and predict.
        seed: seeds the members' initialisation.
    """
    c = model.config
    in_dim = c.deter + c.stoch + c.action_dim if config.condition == "transition" else c.deter
    out_dim = getattr(model.encoder, "out_dim", c.embed) if config.target == "embed" else c.stoch
    ensemble = PredictorEnsemble(config, in_dim, out_dim, generator=torch.Generator().manual_seed(seed))
    return ensemble.to(model.device)


def transition_pairs(
    model: RSSMWorldModel, batch: dict[str, Tensor], posterior: LatentState, config: EnsembleConfig
) -> tuple[Tensor, Tensor]:
    """The ensemble's training pairs from one ELBO batch: one per step t -> t+1 inside an episode.

    Args:
        model: the RSSM (its encoder gives the `"embed"` targets, without gradient).
        batch: `obs [B, T, ...]`, `action [B, T, A]` (`action[:, t]` led to `obs[:, t]`),
            `is_first [B, T]`, as `ReplayBuffer.sample` gives them.
        posterior: the filtered beliefs of the batch, `[B*T]` rows in order `b*T + t`
            (`ELBOTerms.posterior`).
        config: `EnsembleConfig` (`condition`, `target`).

    Returns:
        `(inputs [M, in_dim], targets [M, out_dim])`, detached; M = B*(T-1) minus the pairs
        that cross an episode start.

    Raises:
        ValueError: the posterior does not have `B*T` rows.
    """
    obs, action, is_first = batch["obs"], batch["action"], batch["is_first"]
    b, t = action.shape[:2]
    if posterior.batch != b * t:
        raise ValueError(f"transition_pairs: posterior has {posterior.batch} rows; the batch has B*T = {b * t}")
    keep = ~is_first[:, 1:].bool()
    deter, stoch = posterior.deter.reshape(b, t, -1).detach(), posterior.stoch.reshape(b, t, -1).detach()
    if config.condition == "transition":  # s_t and a_t (action[:, t+1] is the action taken at t)
        x = torch.cat([deter[:, :-1], stoch[:, :-1], action[:, 1:].to(deter.dtype)], dim=-1)
    else:  # h_{t+1}: computed from (h_t, z_t, a_t) before o_{t+1} is seen, as in imagination
        x = deter[:, 1:]
    if config.target == "embed":
        with torch.no_grad():
            y = model.embed(obs[:, 1:].flatten(0, 1)).unflatten(0, (b, t - 1))
    else:
        y = stoch[:, 1:]
    return x[keep], y[keep].detach()


class ExploreTrainer(Trainer):
    """PlaNet's loop with Plan2Explore's collection: `Trainer` with the predictor ensemble trained
    after every ELBO update, and collection episodes planned for `disagreement(ensemble)` alone
    (plus the usual Gaussian exploration noise). Evaluation episodes (`eval_every`, the final
    evaluation) plan for the learned reward head: the zero-shot return of the explored model.

    Args:
        config: `TrainConfig` with `explore=True`.

    Raises:
        ValueError: `config.explore` is False.
        CheckpointMismatch: resuming a checkpoint without an ensemble; as `Trainer` otherwise.

    Source: Sekar et al. 2020 (Plan2Explore), Algorithm 1, with PlaNet's CEM as the planner in
    place of the paper's Dreamer actor-critic.
    """

    def __init__(self, config: TrainConfig) -> None:
        if not config.explore:
            raise ValueError("ExploreTrainer needs TrainConfig.explore=True (use Trainer for task-driven training)")
        self._for_task = False
        super().__init__(config)

    def _build(self) -> None:
        if getattr(self, "ensemble", None) is None:
            self.ensemble = build_ensemble(self.config.ensemble, self.model, seed=self.config.seed + 1)
            self.ensemble_optimizer = torch.optim.Adam(self.ensemble.parameters(), lr=self.config.ensemble.lr,
                                                       eps=self.config.adam_eps)

    def _setup(self, config: TrainConfig, ckpt_path: Path) -> None:
        self.ensemble = None
        super()._setup(config, ckpt_path)
        self._build()

    def _restore(self, path: Path) -> None:
        self._build()
        super()._restore(path)
        state = read_run_checkpoint(path, device=self.device).state
        if "ensemble" not in state:
            raise CheckpointMismatch(f"cannot resume {path} with --explore: the checkpoint holds no ensemble")
        self.ensemble.load_state_dict(state["ensemble"])
        self.ensemble_optimizer.load_state_dict(state["ensemble_optimizer"])

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "ensemble": self.ensemble.state_dict(),
                "ensemble_optimizer": self.ensemble_optimizer.state_dict()}

    def objective(self, model) -> Objective:
        """Collection: `Objective(model, rewards=[disagreement(ensemble)])`; evaluation: the learned reward."""
        if self._for_task:
            return super().objective(model)
        return Objective(model, rewards=[disagreement(self.ensemble)])

    def _after_update(self, batch: dict[str, Tensor], terms) -> dict[str, float]:
        """One Adam step of the ensemble on the update's batch (detached features: the RSSM is untouched)."""
        x, y = transition_pairs(self.model, batch, terms.posterior, self.config.ensemble)
        loss = self.ensemble.loss(x, y)
        self.ensemble_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.ensemble.parameters(), self.config.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            self.ensemble_optimizer.step()
        return {"ensemble_loss": float(loss.detach()) / self.ensemble.members}

    @contextmanager
    def _planning_for_task(self) -> Iterator[None]:
        self._for_task = True
        try:
            yield
        finally:
            self._for_task = False

    def evaluate(self, *, aside: bool = False) -> dict[str, float]:
        """`Trainer.evaluate` (same `aside`) planning for the learned reward head (the zero-shot return)."""
        with self._planning_for_task():
            return super().evaluate(aside=aside)

    def final_evaluation(self) -> dict[str, Any]:
        """`Trainer.final_evaluation` planning for the learned reward head (the zero-shot return)."""
        with self._planning_for_task():
            return super().final_evaluation()


def make_trainer(config: TrainConfig) -> Trainer:
    """`ExploreTrainer(config)` when `config.explore`, else `Trainer(config)`."""
    return ExploreTrainer(config) if config.explore else Trainer(config)


def load_explored(path: str | os.PathLike, *, device: str = "cpu") -> tuple[RSSMWorldModel, PredictorEnsemble, TrainConfig]:
    """The model and ensemble of an `--explore` run (`checkpoint.pt` or its run folder), in eval mode.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the checkpoint is not from an `--explore` run.
    """
    model, config, envelope = load_checkpoint(path, device=device)
    if "ensemble" not in envelope.state:
        raise ValueError(f"{path} is not an --explore run: its checkpoint holds no ensemble")
    ensemble = build_ensemble(config.ensemble, model, seed=config.seed + 1)
    ensemble.load_state_dict(envelope.state["ensemble"])
    return model, ensemble.eval(), config


def coverage(points: np.ndarray, low: tuple[float, ...], high: tuple[float, ...],
             bins: tuple[int, ...] = (20, 20)) -> tuple[float, np.ndarray]:
    """The share of a regular grid's cells visited by `points` (e.g. cart position x pole angle).

    Args:
        points: `[N, D]` visited states; points outside `[low, high]` are clipped into the border cells.
        low, high: the grid's bounds per coordinate (length D).
        bins: cells per coordinate (length D).

    Returns:
        `(share in [0, 1], counts)`, `counts` of shape `bins`.

    Raises:
        ValueError: `points` is not `[N, D]` with D = len(bins) = len(low) = len(high), or a bound
            is not `low < high`.
    """
    points = np.asarray(points, dtype=float)
    d = len(bins)
    if points.ndim != 2 or points.shape[1] != d or len(low) != d or len(high) != d:
        raise ValueError(f"coverage: points must be [N, {d}] with {d} bounds each; got points {points.shape}, "
                         f"low {low}, high {high}")
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if not (lo < hi).all():
        raise ValueError(f"coverage: need low < high; got {low} and {high}")
    n = np.asarray(bins)
    idx = np.clip(np.floor((points - lo) / (hi - lo) * n).astype(int), 0, n - 1)
    counts = np.zeros(tuple(n), dtype=int)
    np.add.at(counts, tuple(idx.T), 1)
    return float((counts > 0).mean()), counts
