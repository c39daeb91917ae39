"""Configuration of the training loop (PlaNet's defaults) and the demo's CPU-sized preset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from latentplan.planners.cem import CEMConfig
from latentplan.planners.distill import DistillConfig
from latentplan.planners.validate import check_choice, check_int, check_positive, check_range
from latentplan.planners.value import ValueConfig
from latentplan.worldmodels.ensemble import EnsembleConfig
from latentplan.worldmodels.rssm import RSSMConfig

__all__ = ["TrainConfig", "demo_config", "RESUMABLE_CHANGES"]


@dataclass(frozen=True)
class TrainConfig:
    """PlaNet's training loop: seed episodes, then {updates; collect one episode with the planner}.

    Defaults are PlaNet's (Hafner et al. 2019, Appendix A); `demo_config()` is a CPU-sized preset.

    Attributes:
        env: environment name for `latentplan.envs.make`, e.g. `dmc:cartpole-swingup`.
        obs: `state` (flat proprioceptive vector) or `pixels` (uint8 `[3, 64, 64]`).
        probes: for `pixels` runs, train probe heads that decode the env's named physical state
            (`cart_x`, `pole_cos`, ...) from the latent, with the env's `info["state"]` as targets
            (`RSSMConfig.probe_dim`), so known rewards over named quantities work on the model.
        action_repeat: environment steps per decision; `None` for PlaNet's per-task value.
        seed: seeds the environment, the model's initialisation and all sampling.
        episodes: total episodes to collect, seed episodes included.
        seed_episodes: episodes of uniform random actions before training (PlaNet: 5).
        updates_per_episode: model updates before each collected episode (PlaNet's C: 100).
        batch_size: chunks per model update (PlaNet: 50).
        chunk_length: steps per chunk (PlaNet: 50).
        exploration_noise: std of Gaussian noise added to planned actions while collecting
            (PlaNet: 0.3), in action units ([-1, 1]).
        eval_every: run evaluation episodes (no noise) after every this many collected
            episodes past the seed episodes; the last episode is always followed by one.
        eval_episodes: evaluation episodes per evaluation (their mean return is logged).
        final_eval_episodes: after the last episode, evaluate the final model over this many
            episodes with fixed seeds (its own generator, so training's randomness is untouched)
            and report the mean return with a 95 % t-interval (`TrainSummary.final_return`,
            `run_dir/final_eval.json`); 0 skips it.
        checkpoint_every: write a checkpoint after every this many episodes (1: a killed run
            loses at most the episode in flight).
        lr: Adam learning rate (PlaNet: 1e-3).
        adam_eps: Adam epsilon (PlaNet: 1e-4).
        grad_clip: gradient-norm clip (PlaNet: 1000).
        compile_update: compile the ELBO's forward and backward (`RSSMWorldModel.elbo_core`) with
            `torch.compile` (inductor: C++/OpenMP on the CPU, Triton on CUDA) for every model
            update. The same loss and gradients up to float rounding (the noise is drawn outside
            the compiled function from the run's generator); the first update pays the compile.
            Off by default: see docs/benchmarks.md ("The compiled training step") for when it pays.
        max_nonfinite_updates: a model update whose loss or gradient is NaN or infinite is skipped
            (the weights stay as they were) and counted (`skipped_updates` in metrics.jsonl); this
            many in a row stop the run with `NonFiniteTraining`, keeping the last good checkpoint.
        run_dir: folder for checkpoint, episodes, metrics.jsonl and curve.png.
        resume: continue the run in `run_dir` from its last checkpoint.
        overwrite: start afresh even if `run_dir` already holds a run (deletes that run's files;
            a non-empty folder that is not a latentplan run folder is never deleted).
        device: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...
        tensorboard: also log to TensorBoard in `run_dir/tb` (needs the `tensorboard` extra).
        progress: show a progress bar.
        max_wall_minutes: stop collecting once this much wall time has passed (the final
            evaluation still runs); `None` for no limit.
        model: the RSSM's architecture and loss (`obs_shape` and `action_dim` are filled from
            the environment).
        planner: the CEM planner used to collect and evaluate.
        value_every: 0 (default) trains no critic; n > 0 takes one TD(lambda) update of a
            `ValueLearner` every n model updates, on rollouts imagined from the update's
            posterior beliefs under the planner (`planner`) as behaviour.
        value: the critic's settings (`ValueConfig`; batch 32 start beliefs per update here,
            since the planner plans from each of them).
        plan_with_value: the planner bootstraps its returns with the critic at the horizon
            (`Objective(value=critic, discount=value.discount)`); needs `value_every > 0`.
        distill: `"none"` (default) or `"cem"`: distil the collecting planner (the teacher)
            into a `GaussianPolicy` while training (`latentplan train --distill cem`); the
            policy is saved as `run_dir/policy.pt` after every episode.
        distill_every: one `Distiller.update` (relabel a few beliefs, take gradient steps) every
            this many model updates.
        distillation: the distiller's settings (`DistillConfig`).
        explore: task-free training (Plan2Explore, Sekar et al. 2020; `latentplan train
            --explore`, `latentplan.exploration`): collect by planning for the disagreement of
            a predictor ensemble alone, trained beside the world model; the env's reward is
            stored and the reward head trained on it for later use, but never planned for
            while collecting. Evaluations plan for the learned reward head (zero-shot).
        ensemble: the predictor ensemble of `explore` (`EnsembleConfig`; K = 5).
    """

    env: str = "dmc:cartpole-swingup"
    obs: Literal["state", "pixels"] = "state"
    probes: bool = True
    action_repeat: int | None = None
    seed: int = 0
    episodes: int = 1000
    seed_episodes: int = 5
    updates_per_episode: int = 100
    batch_size: int = 50
    chunk_length: int = 50
    exploration_noise: float = 0.3
    eval_every: int = 10
    eval_episodes: int = 1
    final_eval_episodes: int = 5
    checkpoint_every: int = 1
    lr: float = 1e-3
    adam_eps: float = 1e-4
    grad_clip: float = 1000.0
    compile_update: bool = False
    max_nonfinite_updates: int = 10
    run_dir: str = "runs/latentplan"
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    tensorboard: bool = False
    progress: bool = True
    max_wall_minutes: float | None = None
    model: RSSMConfig = field(default_factory=RSSMConfig)
    planner: CEMConfig = field(default_factory=CEMConfig)
    value_every: int = 0
    value: ValueConfig = field(default_factory=lambda: ValueConfig(batch=32))
    plan_with_value: bool = False
    distill: Literal["none", "cem"] = "none"
    distill_every: int = 10
    distillation: DistillConfig = field(default_factory=lambda: DistillConfig(labels_per_update=32, steps_per_update=10))
    explore: bool = False
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def __post_init__(self) -> None:
        check_choice(self, "obs", ("state", "pixels"))
        check_choice(self, "distill", ("none", "cem"))
        check_int(self, "episodes", "updates_per_episode", "batch_size", "chunk_length", "eval_every",
                  "eval_episodes", "checkpoint_every", "distill_every", "max_nonfinite_updates", minimum=1)
        check_int(self, "final_eval_episodes", "value_every", minimum=0)
        check_int(self, "seed")
        check_int(self, "action_repeat", minimum=1, optional=True)
        check_range(self, "seed_episodes", 1, self.episodes)
        check_positive(self, "lr", "adam_eps", "grad_clip")
        check_positive(self, "max_wall_minutes", optional=True)
        check_range(self, "exploration_noise", 0.0, math.inf, high_open=True)
        self._check_device()
        if self.plan_with_value and self.value_every == 0:
            raise ValueError("TrainConfig.plan_with_value needs a critic: set value_every > 0")
        if self.explore and (self.value_every or self.distill != "none"):
            raise ValueError("TrainConfig.explore trains no critic and distils no policy: set value_every 0, distill none")

    def _check_device(self) -> None:
        """`device` must be `auto` or a device string torch parses (`cpu`, `cuda`, `cuda:1`, `mps`);
        whether that device exists here is checked when the run starts (`resolve_device`)."""
        import torch

        ok = isinstance(self.device, str) and bool(self.device)
        if ok and self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                ok = False
        if not ok:
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")

    def to_dict(self) -> dict:
        """Plain-Python form (for checkpoints and `config.json`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["model"] = RSSMConfig.from_dict(d["model"])
        planner = dict(d["planner"])
        steps, lr = planner.pop("gradient_steps", 0), planner.pop("gradient_lr", 0.01)  # before CEMConfig.gradient
        if steps:
            planner["gradient"] = {"iterations": steps, "lr": lr}
        d["planner"] = CEMConfig(**planner)
        if "value" in d:
            d["value"] = ValueConfig(**{**d["value"], "hidden": tuple(d["value"].get("hidden", (200, 200)))})
        if "distillation" in d:
            d["distillation"] = DistillConfig.from_dict(d["distillation"])
        if "ensemble" in d:
            d["ensemble"] = EnsembleConfig(**d["ensemble"])
        return cls(**d)


RESUMABLE_CHANGES = frozenset(
    {"episodes", "resume", "overwrite", "device", "tensorboard", "progress", "max_wall_minutes", "run_dir",
     "checkpoint_every", "eval_every", "eval_episodes", "final_eval_episodes", "max_nonfinite_updates",
     "compile_update", "lr", "grad_clip"}
)
"""Fields that may differ between a checkpoint's config and the config that resumes it. `lr` and
`grad_clip` are here to rescue a diverged run (`NonFiniteTraining`): resumed with other values, the
run's numbers differ from an uninterrupted one's from that point on."""


def demo_config(**overrides) -> TrainConfig:
    """The embedded default of `latentplan demo`: cartpole-swingup from state, CPU-sized.

    Differences from PlaNet's settings (all chosen so the demo ends within 15 minutes on two CPU
    cores): fewer episodes, fewer and smaller model updates, a smaller RSSM (128 units instead
    of 200) and a smaller CEM (H=12, I=5, J=100, K=10 instead of J=1000, I=10, K=100); see the
    values below and docs/benchmarks.md for what they reach. The run ends with a 5-episode
    evaluation of the final model (`final_eval_episodes`). `overwrite` stays False: a run
    folder that holds a run is never deleted unless asked (`latentplan demo` writes to the next
    free `runs/demo-N` when `runs/demo` is taken and no `--run-dir` is given).
    """
    base = TrainConfig(
        env="dmc:cartpole-swingup",
        obs="state",
        episodes=40,
        seed_episodes=5,
        updates_per_episode=50,
        batch_size=32,
        chunk_length=32,
        eval_every=5,
        run_dir="runs/demo",
        max_wall_minutes=13.0,
        model=RSSMConfig(deter=128, hidden=128, embed=128),
        planner=CEMConfig(horizon=12, iterations=5, candidates=100, elites=10),
    )
    return dataclasses.replace(base, **overrides)
