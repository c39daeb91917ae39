"""PlaNet's training loop (Hafner et al. 2019, Algorithm 1) with checkpoints that resume.

Run folder layout (`TrainConfig.run_dir`):

- `config.json`: the run's `TrainConfig`;
- `checkpoint.pt`: model, optimiser, RNG states and counters (written atomically);
- `episodes/NNNNNN.npz`: the replay buffer, one file per episode;
- `metrics.jsonl`: one JSON row per episode (losses, returns, planning ms per action, wall time);
- `final_eval.json`: the final model's returns over `final_eval_episodes` fixed-seed episodes;
- `curve.png`: the learning curve;
- `tb/`: TensorBoard logs when enabled;
- `.lock`: the lock of the process training there (`latentplan.io.RunLock`).

Why this module is over ~500 lines: it is one class, the `Trainer`, whose loop, checkpoints,
resume checks, non-finite guard and final evaluation share the run's state; the file formats
are in `latentplan.io` and the configuration in `latentplan.config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from latentplan import envs as lp_envs
from latentplan.planners.cem import CEM
from latentplan.planners.distill import Distiller
from latentplan.planners.fused_search import compile_cache_dir
from latentplan.planners.objective import Objective
from latentplan.planners.value import ValueLearner
from latentplan.worldmodels.replay import ReplayBuffer
from latentplan.worldmodels.rssm import RSSMConfig, RSSMWorldModel

from . import io
from .io import RunLock
from .config import RESUMABLE_CHANGES, TrainConfig
from .evaluation import Agent, run_episode
from .statistics import finite_json, t_interval

__all__ = [
    "CheckpointMismatch", "NonFiniteTraining", "Trainer", "TrainSummary", "load_checkpoint", "read_run_checkpoint",
    "resolve_device",
]


CHECKPOINT = "checkpoint.pt"
LOCK = RunLock.NAME
#: what a run folder holds; `overwrite` deletes these and nothing else
RUN_FILES = ("config.json", CHECKPOINT, "episodes", "metrics.jsonl", "final_eval.json", "curve.png", "tb", "policy.pt")


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run whose configuration differs from the one resuming it."""


class NonFiniteTraining(RuntimeError):
    """Training diverged: `max_nonfinite_updates` updates in a row had a non-finite loss or gradient,
    or the weights became non-finite. The last checkpoint (all finite) is kept."""


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> CUDA when available, else CPU; otherwise `torch.device(name)`.

    Raises:
        ValueError: if `name` is not a device torch knows (`gpu`, `cuda:x`), or a CUDA device
            is asked for and none is available (or not that many).
    """
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass(frozen=True)
class TrainSummary:
    """What a finished (or stopped) run reports.

    Attributes:
        episodes: episodes collected, seed episodes included.
        env_steps: underlying environment steps (action repeat included).
        eval_return: mean return of the last evaluation (`eval_episodes` episodes).
        best_eval_return: the best evaluation return seen.
        plan_ms: mean planning milliseconds per action over the last evaluation.
        final_returns: the final model's return in each of the `final_eval_episodes` fixed-seed
            evaluation episodes (empty if that evaluation was skipped).
        final_return: their mean (NaN if skipped).
        final_return_ci: the 95 % Student t-interval of that mean (`None` with < 2 episodes).
        wall_s: wall time of the run in seconds, over all resumptions.
        run_dir: the run folder.
        stopped_early: true if `max_wall_minutes` cut collection short.
    """

    episodes: int
    env_steps: int
    eval_return: float
    best_eval_return: float
    plan_ms: float
    wall_s: float
    run_dir: str
    stopped_early: bool
    final_returns: tuple[float, ...] = ()
    final_return: float = float("nan")
    final_return_ci: tuple[float, float] | None = None


def read_run_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> io.Envelope:
    """The `run` envelope of a training checkpoint (`checkpoint.pt` or its run folder), weights-only.

    Its `config` holds `train` (`TrainConfig.to_dict()`) and `model` (`RSSMConfig.to_dict()`); its
    `state` the model, optimiser, generator and counters. A checkpoint written before the envelope
    (`{"format": 1, ...}`) is read too, as envelope version 0.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        latentplan.io.CheckpointError: the file is not a latentplan training checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    try:
        return io.load(p, "run", device=device)
    except io.CheckpointError as err:
        try:
            legacy = torch.load(p, map_location=device, weights_only=True)
        except Exception:  # not readable at all: the envelope's error says why
            raise err from None
        if not (isinstance(legacy, dict) and legacy.get("format") == 1 and "model_config" in legacy):
            raise
    config = {"train": json.loads(legacy.pop("config")), "model": json.loads(legacy.pop("model_config"))}
    state = {k: v for k, v in legacy.items() if k != "format"}
    for key in ("buffer_rng", "last_eval"):
        state[key] = json.loads(state[key])
    return io.Envelope("run", 0, config, state, p, io.content_digest("run", config, state))


def load_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> tuple[RSSMWorldModel, TrainConfig, io.Envelope]:
    """Load a trained model from `checkpoint.pt` (or a run folder) with weights-only loading.

    Returns:
        `(model, config, envelope)`: the model in eval mode on `device`, the run's `TrainConfig`,
        and the checkpoint's envelope (`latentplan.io.Envelope`: its `state` has the counters).

    Raises:
        ValueError: `device` is not a torch device, or a CUDA device on a machine without one
            (checked before the file is read).
        FileNotFoundError: if there is no checkpoint at `path`.
        latentplan.io.CheckpointError (a ValueError): if the file is not a latentplan training
            checkpoint, or a malformed one (no model config or weights, a config field this
            version does not know, weights of other shapes than its config); the message names
            the file and the problem.
    """
    dev = resolve_device(device)
    env = read_run_checkpoint(path, device=dev)
    where = env.path
    try:
        config = TrainConfig.from_dict(env.config["train"])
        model_config = RSSMConfig.from_dict(env.config["model"])
    except KeyError as e:
        raise io.CheckpointError(f"{where} is a malformed training checkpoint: its config has no {e}") from None
    except (TypeError, ValueError) as e:
        raise io.CheckpointError(f"{where}: its config does not fit this version of latentplan (written by a "
                                 f"newer one?): {e}") from None
    if "model" not in env.state:
        raise io.CheckpointError(f"{where} is a malformed training checkpoint: it holds no model weights (state.model)")
    try:
        model = RSSMWorldModel(model_config).to(dev)
    except (TypeError, ValueError) as e:  # a config this version's checks refuse
        raise io.CheckpointError(f"{where}: its model config is not valid in this version of latentplan: {e}") from None
    try:
        model.load_state_dict(env.state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()
        raise io.CheckpointError(f"{where}: its model weights do not fit its model config "
                                 f"({first[1].strip() if len(first) > 1 else first[0] if first else e})") from None
    model.eval()
    return model, config, env


_MISSING = "(missing)"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"deter": 16}}` -> `{"model.deter": 16}` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trainer:
    """PlaNet's loop: `seed_episodes` random episodes, then repeat {`updates_per_episode` ELBO
    updates on `[batch_size, chunk_length]` chunks; collect one episode with CEM plus Gaussian
    exploration noise}; evaluation episodes without noise every `eval_every` episodes.

    Args:
        config: `TrainConfig`.

    Raises:
        FileExistsError: if `run_dir` holds a run and neither `resume` nor `overwrite` is set.
        CheckpointMismatch: when resuming a run whose stored config differs in a field that
            cannot change mid-run (the message lists the fields).

    Source: Hafner et al. 2019, Algorithm 1.
    """

    def __init__(self, config: TrainConfig) -> None:
        if config.explore and type(self) is Trainer:
            raise ValueError("TrainConfig.explore needs latentplan.exploration.ExploreTrainer (or make_trainer)")
        self.config = config
        self.run_dir = Path(config.run_dir)
        self._check_run_dir()
        self.device = resolve_device(config.device)
        ckpt_path = self.run_dir / CHECKPOINT
        if config.tensorboard:
            self._tensorboard_class()  # fail before touching the run folder
        self._lock = RunLock(self.run_dir)  # before anything is read or written there
        self.writer = None
        try:
            resuming = config.resume and ckpt_path.exists()
            clear = (not config.resume and any(p.name != LOCK for p in self.run_dir.iterdir())
                     and self._may_clear(config.overwrite))  # refuses (FileExistsError) before any work
            # everything is built and checked before the folder is touched: a typo with --overwrite,
            # a bad model size or an env that does not start leave the old run as it was
            self._setup(config, ckpt_path)
            if clear:
                self._clear_run_dir()
            elif config.resume and not resuming:
                # nothing to resume from (killed before its first checkpoint): start afresh
                for stale in ("metrics.jsonl", "episodes"):
                    path = self.run_dir / stale
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            if clear or (config.resume and not resuming):
                # the buffer built in set-up numbered its files after the old run's: start at 000000
                self.buffer = ReplayBuffer(self.run_dir / "episodes", seed=config.seed)
            self.writer = self._tensorboard() if config.tensorboard else None
            # the run's config is this session's (a resume may have changed RESUMABLE_CHANGES fields),
            # written once set-up succeeded: a start that fails here leaves no config.json behind
            io.atomic_write_text(self.run_dir / "config.json", json.dumps(config.to_dict(), indent=2))
            if resuming:  # so the checkpoint, the config a plain --resume reads, holds this session's too
                self.t_start = time.perf_counter()
                self.save_checkpoint()
            self._fresh = not resuming
        except BaseException:
            self._lock.release()
            raise

    def _check_run_dir(self) -> None:
        """Refuse a `run_dir` that is a file or lies below a file (FileExistsError naming it)."""
        for p in (self.run_dir, *self.run_dir.parents):
            if p.exists() and not p.is_dir():
                where = "is a file" if p == self.run_dir else f"lies below {p}, which is a file"
                raise FileExistsError(f"the run folder {self.run_dir} {where}; choose another --run-dir")

    def _setup(self, config: TrainConfig, ckpt_path: Path) -> None:
        """Build the env, model, optimiser, planner, learners and buffer; restore a checkpoint to resume."""

        self.env = lp_envs.make(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=config.seed)
        obs_shape = tuple(self.env.observation_space.shape)
        space = self.env.action_space
        slices = getattr(self.env, "obs_slices", {}) or {}
        named = tuple((k, int(s.start), int(s.stop)) for k, s in slices.items())
        probes = config.obs == "pixels" and config.probes and bool(named)
        self.model_config = dataclasses.replace(
            config.model, obs_shape=obs_shape, action_dim=int(space.shape[0]),
            action_low=tuple(float(x) for x in space.low), action_high=tuple(float(x) for x in space.high),
            obs_names=named if config.obs == "state" else (),
            probe_dim=max(stop for _, _, stop in named) if probes else 0,
            probe_names=named if probes else (),
        )
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left as it was
            torch.manual_seed(config.seed)
            self.model = RSSMWorldModel(self.model_config).to(self.device)
        # PyTorch's fused Adam (one kernel over all parameters) where the device has it: the same
        # update as the per-parameter loop up to float rounding, 1.9 of the demo's 54 ms per update (measured in session 9)
        fused = True if self.device.type in ("cpu", "cuda") else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=config.adam_eps, fused=fused)
        # TrainConfig.compile_update: the ELBO's pure part compiled (traced on the first update)
        self._elbo_core = None
        if config.compile_update:
            compile_cache_dir()  # the kernels on disk, shared with the planners' compiles
            self._elbo_core = torch.compile(self.model.elbo_core)
        # the probe heads are clipped on their own: their large gradients must not shrink the world model's
        probe = self.model.probe_head
        self._probe_params = list(probe.parameters()) if probe is not None else []
        self._world_params = [p for n, p in self.model.named_parameters() if not n.startswith("probe_head.")]
        self.planner = CEM(config.planner)
        # the run's planned collection, known from the config: `compile="auto"` compiles the fused
        # search from the first decision when that is at least twice its threshold (CEM.expected_transitions)
        decisions = getattr(self.env, "max_episode_steps", None)
        decisions = decisions if isinstance(decisions, int) else 0  # unknown (None, inf): the count rule
        self.planner.expected_transitions = (config.episodes - config.seed_episodes) * decisions * config.planner.model_evals
        features = self.model.feature_size
        self.value_learner = (
            ValueLearner(config.value, features, device=self.device, seed=config.seed) if config.value_every else None
        )
        self.distiller = None
        if config.distill != "none":
            dcfg = config.distillation
            if dcfg.init_seed is None:  # reproducible from the run's seed, like the model
                dcfg = dataclasses.replace(dcfg, init_seed=config.seed)
            self.distiller = Distiller(
                dcfg, features, self.model_config.action_dim, self.model.action_low,
                self.model.action_high, device=self.device,
            )
        self.agent = Agent(self.model, self.planner, objective=self.objective)
        self.updates = 0
        self.nonfinite_updates = 0  # skipped for a non-finite loss or gradient, over this session
        self.nonfinite_in_a_row = 0
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.buffer = ReplayBuffer(self.run_dir / "episodes", seed=config.seed)
        self.episode = 0
        self.env_steps = 0
        self.evaluations = 0
        self.wall_offset = 0.0
        self.best_eval = float("-inf")
        self.last_eval: dict[str, float] = {}
        if config.resume and ckpt_path.exists():
            self._restore(ckpt_path)

    def _may_clear(self, overwrite: bool) -> bool:
        """Whether the run held by a non-empty `run_dir` may be deleted (`_clear_run_dir`, after set-up):
        only with `overwrite`. Refuse (FileExistsError) otherwise, and always when the folder holds
        anything that is not a run's own file."""
        entries = {p.name for p in self.run_dir.iterdir()} - {LOCK}
        temporary = {e for e in entries if e.startswith(".") and e.endswith(".tmp")}  # a write cut short
        foreign = sorted(entries - set(RUN_FILES) - temporary)
        if not overwrite or foreign:
            why = (f"it holds files that are not a latentplan run's ({', '.join(foreign[:5])}), so it is never "
                   "deleted" if foreign else "pass --overwrite to delete that run and start afresh")
            raise FileExistsError(
                f"{self.run_dir} is not empty: {why}; pass --resume to continue a run there, or choose "
                "another --run-dir"
            )
        return True

    def _clear_run_dir(self) -> None:
        """Delete the run files in `run_dir` (checked by `_may_clear`)."""
        entries = {p.name for p in self.run_dir.iterdir()} - {LOCK}
        for name in entries:
            path = self.run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def objective(self, model) -> Objective:
        """The planner's objective: the learned reward, bootstrapped with the critic when
        `plan_with_value` (discount `value.discount`), PlaNet's undiscounted sum otherwise."""
        if self.config.plan_with_value and self.value_learner is not None:
            return Objective(model, value=self.value_learner.value, discount=self.config.value.discount)
        return Objective(model)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        extra = {}
        if self.value_learner is not None:
            extra["value_learner"] = self.value_learner.state_dict()
        if self.distiller is not None:
            extra["distiller"] = self.distiller.state_dict()
        return {
            **extra,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "buffer_rng": self.buffer.rng.bit_generator.state,
            "episode": self.episode,
            "env_steps": self.env_steps,
            "evaluations": self.evaluations,
            "wall_s": self.wall_offset + (time.perf_counter() - self.t_start),
            "best_eval": self.best_eval,
            "last_eval": dict(self.last_eval),
            "planner_auto_compile": self.planner.auto_compile_progress,
        }

    def save_checkpoint(self) -> Path:
        """Write `run_dir/checkpoint.pt` (a `run` envelope, `latentplan.io`) atomically and return its path.

        Raises:
            NonFiniteTraining: if a weight is NaN or infinite: the good checkpoint on disk is kept.
        """
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteTraining(f"the model's weights became non-finite ({', '.join(bad[:3])}"
                                    f"{', ...' if len(bad) > 3 else ''}) at episode {self.episode}; the last good "
                                    f"checkpoint {self.run_dir / CHECKPOINT} is kept")
        config = {"train": io.config_dict(self.config), "model": io.config_dict(self.model_config)}
        path = io.save(self.run_dir / CHECKPOINT, "run", config, self._state())
        if self.distiller is not None:  # the student on its own, for PolicyPlanner / latentplan compare
            io.save_policy(self.distiller.policy, self.run_dir / "policy.pt")
        return path

    def _restore(self, path: Path) -> None:
        try:
            envelope = read_run_checkpoint(path, device=self.device)
        except io.CheckpointError as e:
            raise CheckpointMismatch(f"cannot resume: {e}") from e
        ckpt = envelope.state
        # fields added to the configs since the checkpoint was written take their defaults
        try:
            stored = io.config_dict(TrainConfig.from_dict(envelope.config["train"]))
            stored_model = io.config_dict(RSSMConfig.from_dict(envelope.config["model"]))
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointMismatch(f"cannot resume {path}: its config does not fit this version ({e})") from e
        # the model's config as the run uses it (filled from the env), every nested field by its dotted name
        then = _flatten({**stored, "model": stored_model})
        now = _flatten({**io.config_dict(self.config), "model": io.config_dict(self.model_config)})
        diff = sorted(k for k in set(then) | set(now)
                      if k.split(".")[0] not in RESUMABLE_CHANGES and then.get(k, _MISSING) != now.get(k, _MISSING))
        if diff:
            detail = ", ".join(f"{k}: checkpoint {then.get(k, _MISSING)!r}, now {now.get(k, _MISSING)!r}" for k in diff)
            raise CheckpointMismatch(f"cannot resume {path}: the run was made with another config ({detail})")
        try:
            self.model.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as e:
            raise CheckpointMismatch(f"cannot resume {path}: its model weights do not fit its config ({e})") from e
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # lr is a resumable change (rescuing a diverged run)
            group["lr"] = self.config.lr
        if self.value_learner is not None:
            self.value_learner.load_state_dict(ckpt["value_learner"])
        if self.distiller is not None:
            self.distiller.load_state_dict(ckpt["distiller"])
        self.generator.set_state(ckpt["generator"].cpu())
        self.episode = int(ckpt["episode"])
        # model updates so far: C before every collected episode past the seed episodes
        self.updates = max(0, self.episode - self.config.seed_episodes) * self.config.updates_per_episode
        self.env_steps = int(ckpt["env_steps"])
        self.evaluations = int(ckpt["evaluations"])
        self.wall_offset = float(ckpt["wall_s"])
        self.best_eval = float(ckpt["best_eval"])
        self.last_eval = dict(ckpt["last_eval"])
        # where compile="auto" stands (checkpoints from before it was saved: from zero)
        self.planner.auto_compile_progress = int(ckpt.get("planner_auto_compile", 0))
        self.buffer.load_directory(self.episode)
        self.buffer.rng.bit_generator.state = ckpt["buffer_rng"]
        self._truncate_metrics(self.episode)

    def _truncate_metrics(self, episode: int) -> None:
        """Drop the metrics rows of episodes after the checkpoint's (logged before a kill), and the
        row of an evaluation aside after a `max_wall_minutes` stop (the resumed run goes on)."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            rows = [r for r in io.read_jsonl(path) if r.get("episode", 0) <= episode and not r.get("stopped_early")]
            io.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    @staticmethod
    def _tensorboard_class():
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # depends on the optional extra
            raise ImportError("TensorBoard logging needs `pip install latentplan[tensorboard]`") from e
        return SummaryWriter

    def _tensorboard(self):
        return self._tensorboard_class()(str(self.run_dir / "tb"))

    # ------------------------------------------------------------------ the loop
    def update(self) -> dict[str, float]:
        """One ELBO gradient step on a sampled batch; returns the loss terms."""
        c = self.config
        batch = self.buffer.sample(c.batch_size, c.chunk_length)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self.model.train()
        terms = self.model.elbo(
            batch["obs"], batch["action"], batch["reward"], batch["is_first"], generator=self.generator,
            state=batch.get("state") if self.model.probe_head is not None else None, core=self._elbo_core,
        )
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._world_params, c.grad_clip)
        probe_norm = torch.nn.utils.clip_grad_norm_(self._probe_params, c.grad_clip) if self._probe_params else grad_norm
        self.model.eval()
        self.updates += 1
        out = {**terms.scalars(), "grad_norm": float(grad_norm)}
        if not (torch.isfinite(terms.loss) and torch.isfinite(grad_norm) and torch.isfinite(probe_norm)):
            return self._skip_update(out)  # the weights stay as they were
        self.optimizer.step()
        self.nonfinite_in_a_row = 0
        out.update(self._after_update(batch, terms))
        if self.value_learner is not None and self.updates % c.value_every == 0:
            # the behaviour is the agent's own planner with the agent's own objective
            info = self.value_learner.update(self.model, terms.posterior, self.planner,
                                             objective=self.objective(self.model), generator=self.generator)
            out.update({"value_loss": info["value_loss"], "value_mean": info["value_mean"],
                        "value_target_mean": info["target_mean"]})
        if self.distiller is not None and self.updates % c.distill_every == 0:
            info = self.distiller.update(self.model, terms.posterior, self.planner, self.objective, generator=self.generator)
            out["distill_loss"] = info["loss"]
        return out

    def _after_update(self, batch: dict[str, torch.Tensor], terms) -> dict[str, float]:
        """Hook after every applied ELBO step, for parts trained beside the world model on the same
        batch and `ELBOTerms` (`latentplan.exploration.ExploreTrainer`); returns metrics to log."""
        return {}

    def _skip_update(self, out: dict[str, float]) -> dict[str, float]:
        """Count an update skipped for a non-finite loss or gradient; stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_updates += 1
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.config.max_nonfinite_updates:
            ckpt = self.run_dir / CHECKPOINT
            after = (f"keeping the last good checkpoint {ckpt} (--resume with a smaller --lr or --grad-clip "
                     "continues from it)") if ckpt.exists() else \
                (f"before the first checkpoint: nothing to resume, so start again with a smaller --lr or --grad-clip "
                 f"(and --overwrite; the episodes and metrics written so far stay in {self.run_dir})")
            raise NonFiniteTraining(
                f"{self.nonfinite_in_a_row} model updates in a row had a non-finite loss or gradient (loss "
                f"{out.get('loss')}, gradient norm {out.get('grad_norm')}; lr {self.config.lr}, grad_clip "
                f"{self.config.grad_clip}); stopped at episode {self.episode}, {after}"
            )
        return {**out, "skipped": 1.0}

    def evaluate(self, *, aside: bool = False) -> dict[str, float]:
        """Run `eval_episodes` episodes without exploration noise; returns mean return and ms/action.

        Args:
            aside: an evaluation outside the training's schedule (after a `max_wall_minutes`
                stop): fixed seeds (`seed * 1_000_003 + 30_000_000 + i`) and its own generator
                seeded with `seed`, and no counter or best/last return of the run is changed, so
                a later resumption continues exactly as the uninterrupted run.
        """
        c = self.config
        generator = torch.Generator(device=self.device).manual_seed(c.seed) if aside else self.generator
        rets, ms = [], []
        for i in range(c.eval_episodes):
            base = 30_000_000 if aside else 10_000_000 + self.evaluations * 100
            _, st = run_episode(self.env, self.agent, seed=c.seed * 1_000_003 + base + i, noise=0.0,
                                generator=generator)
            rets.append(st.ret)
            ms.append(st.plan_ms)
        out = {"eval_return": float(np.mean(rets)), "eval_plan_ms": float(np.mean(ms))}
        if not aside:
            self.evaluations += 1
            self.best_eval = max(self.best_eval, out["eval_return"])
            self.last_eval = out
        return out

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate the current model over `final_eval_episodes` episodes without exploration noise.

        The episodes' seeds are fixed (`seed * 1_000_003 + 20_000_000 + i`) and the planner samples
        from its own generator seeded with `seed`, so the figure is reproducible and the training
        generator (hence a later resumption) is untouched. Writes `run_dir/final_eval.json`.

        Returns:
            `{"returns": [...], "mean", "ci95": [low, high] | None, "plan_ms", "seeds": [...],
            "episode", "nonfinite_returns"}`; with a NaN/inf return the interval is `None` (and
            `final_eval.json` writes the non-finite numbers as `null`).
        """
        c = self.config
        seeds = [c.seed * 1_000_003 + 20_000_000 + i for i in range(c.final_eval_episodes)]
        generator = torch.Generator(device=self.device).manual_seed(c.seed)
        rets, ms = [], []
        for seed in tqdm(seeds, disable=not c.progress or not seeds, desc="final evaluation", unit="ep"):
            _, st = run_episode(self.env, self.agent, seed=seed, noise=0.0, generator=generator)
            rets.append(float(st.ret))
            ms.append(st.plan_ms)
        nonfinite = sum(not math.isfinite(r) for r in rets)  # NaN/inf returns have no interval
        ci = t_interval(rets) if not nonfinite else None
        out = {"returns": rets, "mean": float(np.mean(rets)) if rets else None,
               "ci95": None if ci is None else list(ci), "plan_ms": float(np.mean(ms)) if ms else None,
               "seeds": seeds, "episode": self.episode, "nonfinite_returns": nonfinite}
        if seeds:  # standard JSON: NaN/inf written as null
            io.atomic_write_text(self.run_dir / "final_eval.json", json.dumps(finite_json(out), indent=2, allow_nan=False))
        return out

    def _log(self, row: dict[str, Any]) -> None:
        io.append_jsonl(self.run_dir / "metrics.jsonl", [row])
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("episode",):
                    self.writer.add_scalar(k, v, self.env_steps)

    def run(self) -> TrainSummary:
        """Train until `episodes` episodes are collected (or `max_wall_minutes` passes); evaluate at
        the end; write `curve.png`. Returns the `TrainSummary`. The run folder's lock is released
        when it returns or raises.

        Raises:
            NonFiniteTraining: the run diverged (see `TrainConfig.max_nonfinite_updates`); the last
                good checkpoint is kept and `--resume` continues from it (with a smaller `lr` or
                `grad_clip`, both resumable changes).
            latentplan.evaluation.EnvFailure: the environment failed (cannot render, non-finite
                observation, ...). A new run that fails before it has collected an episode leaves
                its folder empty again; later failures keep what was written.
        """
        try:
            return self._run()
        except Exception:
            if self._fresh and not (self.run_dir / CHECKPOINT).exists() and self.episode == 0:
                # a new run that failed before it collected anything (an env that cannot render, a
                # chunk longer than the episodes, ...) has nothing to resume: leave the folder as
                # empty as it was found, so the corrected command can start there. Once episodes
                # or metrics exist they stay (they show what happened, e.g. a divergence)
                self._clear_run_dir()
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Release the run folder's lock (and the TensorBoard writer); idempotent."""
        self._lock.release()
        if getattr(self, "writer", None) is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> TrainSummary:
        c = self.config
        self.t_start = time.perf_counter()
        deadline = None if c.max_wall_minutes is None else c.max_wall_minutes * 60 - self.wall_offset
        bar = tqdm(total=c.episodes, initial=self.episode, disable=not c.progress, desc="episodes", unit="ep")
        stopped_early = False
        while self.episode < c.episodes:
            if deadline is not None and time.perf_counter() - self.t_start > deadline:
                stopped_early = True
                break
            row: dict[str, Any] = {"episode": self.episode + 1}
            seed = c.seed * 1_000_003 + self.episode
            if self.episode < c.seed_episodes:
                episode, st = run_episode(self.env, None, seed=seed, generator=self.generator)
            else:
                losses = [self.update() for _ in range(c.updates_per_episode)]
                keys = dict.fromkeys(k for l in losses for k in l if k != "skipped")  # value/distill: some updates
                row.update({k: float(np.mean([l[k] for l in losses if k in l])) for k in keys})
                if any("skipped" in l for l in losses):
                    row["skipped_updates"] = sum("skipped" in l for l in losses)
                episode, st = run_episode(self.env, self.agent, seed=seed, noise=c.exploration_noise, generator=self.generator)
            self.buffer.add(episode)
            self.episode += 1
            self.env_steps += st.env_steps
            row.update({"env_steps": self.env_steps, "train_return": st.ret, "plan_ms": st.plan_ms})
            trained = self.episode - c.seed_episodes
            if trained > 0 and (trained % c.eval_every == 0 or self.episode == c.episodes):
                row.update(self.evaluate())
            row["wall_s"] = self.wall_offset + time.perf_counter() - self.t_start
            self._log(row)
            if self.episode % c.checkpoint_every == 0 or self.episode == c.episodes:
                self.save_checkpoint()
            bar.update(1)
            bar.set_postfix({k: round(row[k], 1) for k in ("train_return", "eval_return", "loss") if k in row})
        bar.close()
        last_eval, best_eval = self.last_eval, self.best_eval
        if stopped_early:
            if self.episode % c.checkpoint_every:  # the training state at the stop, for --resume
                self.save_checkpoint()
            # the stopped model's figure, drawn aside (own generator and seeds, no counter moved) and
            # logged in a row marked `stopped_early` that a resumption drops: a run stopped and
            # resumed any number of times ends as the uninterrupted one
            last_eval = self.evaluate(aside=True)
            best_eval = max(best_eval, last_eval["eval_return"])
            row = {"episode": self.episode, "env_steps": self.env_steps, **last_eval, "stopped_early": True}
            row["wall_s"] = self.wall_offset + time.perf_counter() - self.t_start
            self._log(row)
        elif "eval_return" not in self._last_row():
            row = {"episode": self.episode, "env_steps": self.env_steps, **self.evaluate()}
            row["wall_s"] = self.wall_offset + time.perf_counter() - self.t_start
            self._log(row)
            self.save_checkpoint()
            last_eval, best_eval = self.last_eval, self.best_eval
        final = self.final_evaluation()
        from .plots import plot_learning_curve

        plot_learning_curve(self.run_dir / "metrics.jsonl", self.run_dir / "curve.png", title=c.env, final=final)
        return TrainSummary(
            episodes=self.episode, env_steps=self.env_steps,
            eval_return=last_eval.get("eval_return", float("nan")),
            best_eval_return=best_eval, plan_ms=last_eval.get("eval_plan_ms", float("nan")),
            wall_s=self.wall_offset + time.perf_counter() - self.t_start, run_dir=str(self.run_dir),
            stopped_early=stopped_early, final_returns=tuple(final["returns"]),
            final_return=float(np.mean(final["returns"])) if final["returns"] else float("nan"),
            final_return_ci=None if final["ci95"] is None else tuple(final["ci95"]),
        )

    def _last_row(self) -> dict:
        path = self.run_dir / "metrics.jsonl"
        rows = io.read_jsonl(path) if path.exists() else []
        return rows[-1] if rows else {}
