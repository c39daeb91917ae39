"""Distillation with environments: beliefs from a replay buffer, DAgger rounds, the offline run on a
checkpoint, and the `latentplan distill` command.

    latentplan distill --checkpoint runs/cartpole_long.pt --teacher cem --out runs/distill_cem

The planner-layer parts (the policy, the losses, the `Distiller` learner) are in
`latentplan.planners.distill`. Here: `replay_beliefs` filters recorded episodes into posterior
beliefs, `dagger_round` lets the student act in the real environment while the teacher labels the
beliefs it visits (DAgger, Ross, Gordon & Bagnell 2011), and `run_distillation` does the whole
offline run: label replay beliefs, fit, DAgger rounds, evaluate student and teacher on the same
seeds, and write the policy, the learner's state, a loss curve and `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from latentplan import envs as lp_envs
from latentplan.planners.base import Plan, Planner
from latentplan.planners.distill import DistillConfig, Distiller
from latentplan.planners.policy import PolicyPlanner
from latentplan.planners.objective import Objective
from latentplan.planners.validate import check_choice, check_int, check_range
from latentplan.worldmodels.replay import Episode, ReplayBuffer
from latentplan.worldmodels.filtering import filter_episodes
from latentplan.worldmodels.state import LatentState

from .evaluation import Agent, run_episode
from . import distill_run_state as run_state
from .distill_run_state import DistillResult
from .io import atomic_write_text, save_policy
from .registry import Budget, PlannerSpec, make_planner

__all__ = ["DistillRunConfig", "DistillResult", "dagger_round", "evaluate_planner", "make_teacher", "replay_beliefs",
           "run_distillation"]

# --------------------------------------------------------------------------- beliefs from data


@torch.no_grad()
def replay_beliefs(
    model: Any,
    episodes: list[Episode],
    *,
    generator: torch.Generator | None = None,
    include_last: bool = False,
) -> LatentState:
    """Filter recorded episodes into the posterior beliefs an agent would have planned from.

    Every episode is run through `model.observe` from its first observation (episodes of the same
    length are batched); the belief after observing `obs[t]` is the one the agent planned from
    at decision t.

    Args:
        model: the `WorldModel` (e.g. the RSSM the episodes trained).
        episodes: recorded episodes (`obs [T+1, ...]`, `action [T+1, A]`, `is_first`; see
            `latentplan.worldmodels.Episode`).
        generator: randomness of the posterior samples (used if `observe` takes one).
        include_last: also return the belief after the final observation (no decision is made
            there).

    Returns:
        `[N]` beliefs, N = sum over episodes of T (or T + 1 with `include_last`), ordered by
        episode length group, episode, then time.

    Raises:
        ValueError: if `episodes` is empty, or from `model.observe` on observations that do not fit.
    """
    if not episodes:
        raise ValueError("replay_beliefs: no episodes")
    beliefs, index = filter_episodes(model, episodes, generator=generator, include_last=include_last)
    # rows grouped by episode length, in the order the lengths first appear (the filtering order)
    group: dict[int, int] = {}
    for ep in episodes:
        group.setdefault(len(ep["action"]), len(group))
    rank = torch.tensor([group[len(ep["action"])] for ep in episodes], device=index.device)
    return beliefs.index(torch.sort(rank[index], stable=True).indices)


# --------------------------------------------------------------------------- DAgger


class _Recorder:
    """A planner wrapper for DAgger: the student acts, or with probability beta the teacher
    (whose plan is stored as a label at once); the student's beliefs are kept for relabelling."""

    def __init__(self, student: Planner, teacher: Planner, distiller: Distiller, beta: float, rng: np.random.Generator):
        self.student, self.teacher, self.distiller = student, teacher, distiller
        self.beta, self.rng = beta, rng
        self.visited: list[LatentState] = []
        self.teacher_steps = 0

    def plan(self, objective: Objective, state: LatentState, *, warm_start: Plan | None = None,
             generator: torch.Generator | None = None, deadline: float | None = None) -> Plan:
        if self.beta > 0 and self.rng.random() < self.beta:
            plan = self.teacher.plan(objective, state, generator=generator)
            self.distiller.add_plan(objective, state, plan, generator=generator)
            self.teacher_steps += 1
            return plan
        self.visited.append(state.detach())
        return self.student.plan(objective, state, generator=generator)


def dagger_round(
    env: Any,
    model: Any,
    distiller: Distiller,
    teacher: Planner,
    objective_factory: Callable[[Any], Objective],
    *,
    seeds: list[int],
    beta: float = 0.0,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One DAgger round: the student acts in the real environment, the teacher labels what it visits.

    For every seed, one episode runs with the mixture policy of DAgger: at each decision the
    teacher acts with probability `beta` (its plan is labelled at once), otherwise the student,
    `PolicyPlanner(distiller.policy)` (its mode, plus Gaussian `noise`); the student's beliefs are
    then relabelled by the teacher in batches (`Distiller.relabel`). No gradient step is taken
    here: call `distiller.train(...)` after the round.

    Args:
        env: an environment from `latentplan.envs.make` (or any Gymnasium env the model fits).
        model: the `WorldModel`.
        distiller: the learner (its policy acts; its data set receives the labels).
        teacher: any `Planner`.
        objective_factory: `model -> Objective`.
        seeds: one episode per seed (`env.reset(seed=)`; the episode's generator is `generator`).
        beta: probability that the teacher acts at a decision (DAgger's beta_i), in [0, 1].
        noise: std of Gaussian noise on the student's actions, in action units.
        generator: randomness of the beliefs, the teacher and the noise.
        progress: called with 1 after every decision and with the number of beliefs labelled.

    Returns:
        `returns` (list, one per episode), `mean_return`, `decisions`, `labels` (added),
        `skipped` (teacher labels left out as NaN/inf, see `Distiller.add_plan`),
        `teacher_steps` (decisions the teacher acted), `teacher_ms` (per relabelled belief).

    Raises:
        ValueError: if `beta` is not in [0, 1], `seeds` is empty, or the model's action size or
            bounds are not the student's (`Distiller.check_model`), before an episode runs.

    Source: Ross, Gordon & Bagnell 2011, "A Reduction of Imitation Learning and Structured
    Prediction to No-Regret Online Learning" (AISTATS), Algorithm 3.3.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"dagger_round: beta must be in [0, 1]; got {beta}")
    if not seeds:
        raise ValueError("dagger_round: seeds is empty")
    distiller.check_model(model, "dagger_round")
    rng = np.random.default_rng(int(seeds[0]))
    labels_before, skipped_before = distiller.labels, distiller.skipped
    rec = _Recorder(PolicyPlanner(distiller.policy), teacher, distiller, beta, rng)
    agent = Agent(model, rec, objective=objective_factory)
    returns, decisions = [], 0
    for s in seeds:
        step = (lambda t: progress(1)) if progress is not None else None
        _, st = run_episode(env, agent, seed=int(s), noise=noise, generator=generator, on_step=step)
        returns.append(st.ret)
        decisions += st.decisions
    teacher_ms = float("nan")
    if rec.visited:
        visited = LatentState.cat(rec.visited)
        info = distiller.relabel(model, visited, teacher, objective_factory, generator=generator, progress=progress)
        teacher_ms = info["teacher_ms"]
    return {
        "returns": returns, "mean_return": statistics.fmean(returns), "decisions": decisions,
        "labels": distiller.labels - labels_before, "skipped": distiller.skipped - skipped_before,
        "teacher_steps": rec.teacher_steps, "teacher_ms": teacher_ms}


# --------------------------------------------------------------------------- the offline run


@dataclass(frozen=True)
class DistillRunConfig:
    """`latentplan distill`: distil a planner into a policy on a trained checkpoint.

    Attributes:
        checkpoint: a `checkpoint.pt` (or a run folder) written by `latentplan train`.
        teacher: the planner distilled, as a registry spec (`latentplan.registry`): a name
            (`cem`, `icem`, `mppi`, `cem_softmax`, `cem_gd`, `gradient`, `mcts`, or one registered by the user)
            with optional config overrides, e.g. `cem:iterations=10,candidates=300` or
            `mcts:simulations=200`. Without `budget_evals`, each planner's registry defaults
            (CEM: I = 5, J = 100, K = 10).
        budget_evals: model evaluations per decision the teacher is scaled to (as in
            `latentplan compare`); `None`: the spec's own size.
        out: output folder: `policy.pt`, `distiller.pt`, `loss.png`, `metrics.json`.
        horizon: the teacher's planning horizon H (every planner's, MCTS's tree depth included).
        target: `auto` (`visits` for MCTS, `action` otherwise), `action`, `plan` or `visits`.
        episodes_dir: the replay episodes (`NNNNNN.npz`); default: `<run folder>/episodes`, where
            the run folder is the checkpoint's folder, or `<file stem>/` beside a `.pt` file.
        replay_states: beliefs drawn uniformly from the replay episodes and labelled before the
            DAgger rounds (0: none; then round 1 lets the teacher act, beta = 1).
        fit_steps: gradient steps on the replay labels.
        dagger_rounds: DAgger rounds after the fit.
        dagger_episodes: episodes per DAgger round.
        dagger_steps: gradient steps after each round.
        dagger_beta: probability that the teacher acts at a decision in a round (DAgger's beta).
        dagger_noise: std of Gaussian noise on the student's actions in the rounds.
        eval_episodes: evaluation episodes of the student (and of the teacher, with
            `eval_teacher`) on seeds `eval_seed + i`, same seeds for both.
        eval_seed: first evaluation seed.
        eval_teacher: also evaluate the teacher (costly: a full plan per decision).
        seed: seeds the generator of labels, rounds and minibatches, and the rounds' episodes
            (`seed * 1000 + 100 + i`).
        device: `cpu`, `cuda`, `auto`.
        progress: show progress bars.
        save_data: write the learner's labelled data set into the finished run's `distiller.pt`.
        resume: continue the unfinished run in `out` from its last finished phase (same config;
            see `latentplan.distill_run_state`); without a run there, start afresh.
        distill: the learner's settings (`DistillConfig`; its `target` is set from `target`, its
            `init_seed`, when `None`, from `seed`).

    Raises:
        ValueError: a field out of range, a malformed `teacher` spec, a run that makes no label,
            rounds without episodes, or no gradient step (unless `save_data`: labels only).
    """

    checkpoint: str
    teacher: str = "cem"
    budget_evals: int | None = None
    out: str = "runs/distill"
    horizon: int = 12
    target: Literal["auto", "action", "plan", "visits"] = "auto"
    episodes_dir: str | None = None
    replay_states: int = 3000
    fit_steps: int = 3000
    dagger_rounds: int = 3
    dagger_episodes: int = 2
    dagger_steps: int = 1000
    dagger_beta: float = 0.0
    dagger_noise: float = 0.0
    eval_episodes: int = 5
    eval_seed: int = 1000
    eval_teacher: bool = True
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    save_data: bool = False
    resume: bool = False
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        PlannerSpec.parse(self.teacher)  # a malformed spec fails here, an unknown name when it is built
        check_int(self, "horizon", minimum=1)
        check_int(self, "budget_evals", minimum=1, optional=True)
        check_int(self, "replay_states", "fit_steps", "dagger_rounds", "dagger_episodes", "dagger_steps",
                  "eval_episodes", minimum=0)
        check_range(self, "dagger_beta", 0.0, 1.0)
        check_range(self, "dagger_noise", 0.0, math.inf, high_open=True)
        check_choice(self, "target", ("auto", "action", "plan", "visits"))
        if self.dagger_rounds > 0 and self.dagger_episodes == 0:
            raise ValueError("DistillRunConfig.dagger_episodes must be >= 1 when dagger_rounds > 0; got 0")
        if self.replay_states == 0 and self.dagger_rounds == 0:
            raise ValueError("DistillRunConfig: nothing to distil (replay_states = 0 and dagger_rounds = 0 make no label)")
        if (self.fit_steps if self.replay_states else 0) + self.dagger_rounds * self.dagger_steps == 0 and not self.save_data:
            raise ValueError("DistillRunConfig: no gradient step would be taken (fit_steps, dagger_steps): policy.pt "
                             "would be the untrained student; set save_data to only label")

    @property
    def resolved_target(self) -> str:
        """The target in use: `target`, or for `auto` `visits` with MCTS and `action` otherwise."""
        if self.target != "auto":
            return self.target
        return "visits" if PlannerSpec.parse(self.teacher).name == "mcts" else "action"


def make_teacher(cfg: DistillRunConfig, model: Any) -> Planner:
    """The teacher planner `cfg.teacher` names, built by the registry at horizon `cfg.horizon`
    (and scaled to `cfg.budget_evals` when set).

    Raises:
        ValueError: an unknown name or a bad override (the registry's message).
    """
    budget = Budget(evals=cfg.budget_evals) if cfg.budget_evals is not None else None
    return make_planner(cfg.teacher, model, budget, horizon=cfg.horizon).planner


def _episodes_dir(cfg: DistillRunConfig) -> Path | None:
    if cfg.episodes_dir is not None:
        return Path(cfg.episodes_dir)
    p = Path(cfg.checkpoint)
    for cand in ((p / "episodes",) if p.is_dir() else (p.parent / "episodes", p.parent / p.stem / "episodes")):
        if cand.is_dir():
            return cand
    return None


def evaluate_planner(
    env: Any,
    model: Any,
    planner: Planner,
    objective_factory: Callable[[Any], Objective],
    seeds: list[int],
    *,
    warm_start: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Run one episode per seed with `Agent(model, planner)` (no exploration noise), each with
    `env.reset(seed=s)` and a generator seeded with `s`, so two planners see the same episodes.

    Returns:
        `returns` (list), `mean`, `std` (sample std; 0 for one episode), `plan_ms` and
        `model_evals` (means per decision over the episodes), `seeds`.
    """
    agent = Agent(model, planner, objective=objective_factory, warm_start=warm_start)
    rets, ms, evals = [], [], []
    for s in tqdm(seeds, desc=desc, disable=not progress, unit="ep", leave=False):
        _, st = run_episode(env, agent, seed=int(s), generator=torch.Generator(device=agent.device).manual_seed(int(s)))
        rets.append(st.ret)
        ms.append(st.plan_ms)
        evals.append(st.model_evals)
    return {
        "returns": rets, "mean": statistics.fmean(rets), "std": statistics.stdev(rets) if len(rets) > 1 else 0.0,
        "plan_ms": statistics.fmean(ms), "model_evals": statistics.fmean(evals), "seeds": [int(s) for s in seeds],
    }


def run_distillation(cfg: DistillRunConfig, *, objective_factory: Callable[[Any], Objective] | None = None) -> DistillResult:
    """The offline distillation run on a checkpoint (what `latentplan distill` does).

    1. Load the model; build the teacher (`make_teacher`) and a `Distiller`.
    2. Label `replay_states` beliefs drawn uniformly from the run's replay episodes
       (`replay_beliefs`), then take `fit_steps` gradient steps.
    3. `dagger_rounds` rounds of `dagger_round` (`dagger_episodes` episodes each), each followed
       by `dagger_steps` gradient steps. Without replay beliefs the first round lets the teacher
       act (beta = 1), as DAgger's first iteration does.
    4. Evaluate the student (`PolicyPlanner`) and, with `eval_teacher`, the teacher on the same
       `eval_episodes` seeds.
    5. Write `out/policy.pt` (`latentplan.io.save_policy`), `out/loss.png`
       (`latentplan.plots.plot_distillation`), `out/metrics.json` and `out/distiller.pt`
       (`latentplan.io.save_distiller`, without the data set unless `save_data`).

    After each phase (the replay labels, the fit, each round's labels, each round's steps, the
    evaluation) `out/distiller.pt` (with the data set) and `out/progress.json` hold the run's
    state, so that `resume` continues a killed run and ends as the uninterrupted one
    (`latentplan.distill_run_state`).

    Args:
        cfg: `DistillRunConfig`.
        objective_factory: `model -> Objective` for teacher and evaluation; default the learned
            reward, `Objective(model)`.

    Returns:
        `DistillResult`.

    Raises:
        FileNotFoundError: if the checkpoint is missing.
        ValueError: if `out` is a file, is in use by another run, or holds an unfinished run and
            `resume` is not set (before the checkpoint is read), `replay_states > 0` but no replay
            episodes are found, or the teacher cannot be built.
        CheckpointMismatch (a `ValueError`): with `resume`, a run made with another config or
            checkpoint (`latentplan.distill_run_state.load`).
    """
    with run_state.lock(cfg.out):  # one run at a time in `out`
        run = _DistillRun(cfg, objective_factory or (lambda m: Objective(m)))
        for name, phase in run_state.phases(run):
            if name not in run.done:
                phase()
                run.done.append(name)
                run_state.save(run)
        return run.write()


class _DistillRun:
    """The state of one `run_distillation`: model, teacher, distiller, env, generator and metrics,
    with one method per stage of the run."""

    def __init__(self, cfg: DistillRunConfig, factory: Callable[[Any], Objective]) -> None:
        from .training import load_checkpoint, resolve_device

        self.t_start = time.perf_counter()
        self.cfg, self.factory = cfg, factory
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise ValueError(f"out {cfg.out!r} exists and is not a folder")
        resumed = run_state.load(cfg, Path(cfg.out))
        device = resolve_device(cfg.device)
        self.model, train_cfg, envelope = load_checkpoint(cfg.checkpoint, device=str(device))
        self.checkpoint_sha256 = envelope.sha256
        self.teacher = make_teacher(cfg, self.model)
        init_seed = cfg.seed if cfg.distill.init_seed is None else cfg.distill.init_seed
        dcfg = dataclasses.replace(cfg.distill, target=cfg.resolved_target, init_seed=init_seed)
        m = self.model
        self.distiller = Distiller(dcfg, m.feature_size, m.action_dim, m.action_low, m.action_high, device)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.env = lp_envs.make(train_cfg.env, obs=train_cfg.obs, action_repeat=train_cfg.action_repeat, seed=cfg.seed)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics: dict[str, Any] = {
            "checkpoint": cfg.checkpoint, "env": train_cfg.env, "teacher": cfg.teacher,
            "teacher_repr": repr(self.teacher), "target": cfg.resolved_target, "config": dataclasses.asdict(cfg),
            "rounds": [],
        }
        self.phase_steps: list[tuple[str, int]] = []
        run_state.restore(self, resumed)  # the phases done, and their state when resuming

    def fit(self, steps: int, desc: str) -> None:
        """`steps` gradient steps on the labels so far, with a progress bar."""
        if steps == 0:
            return
        bar = tqdm(total=steps, desc=desc, disable=not self.cfg.progress, unit="step", leave=False)

        def tick(loss: float) -> None:
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

        self.distiller.train(steps, generator=self.gen, progress=tick)
        bar.close()
        self.phase_steps.append((desc, self.distiller.steps))

    def label_replay(self) -> None:
        """Label `replay_states` beliefs drawn uniformly from the run's replay episodes."""
        cfg = self.cfg
        ep_dir = _episodes_dir(cfg)
        if ep_dir is None or not any(ep_dir.glob("[0-9]" * 6 + ".npz")):
            raise ValueError(
                f"no replay episodes found for {cfg.checkpoint} (looked for an episodes/ folder beside it); "
                "pass --episodes-dir or --replay-states 0"
            )
        buf = ReplayBuffer(ep_dir)
        buf.load_directory()
        beliefs = replay_beliefs(self.model, buf.episodes, generator=self.gen)
        available = beliefs.batch
        n = min(cfg.replay_states, beliefs.batch)
        idx = torch.randperm(beliefs.batch, generator=self.gen, device=self.gen.device)[:n].to(beliefs.device)
        beliefs = beliefs.index(idx)
        bar = tqdm(total=n, desc=f"{cfg.teacher} labels", disable=not cfg.progress, unit="belief")
        t0 = time.perf_counter()
        info = self.distiller.relabel(self.model, beliefs, self.teacher, self.factory, generator=self.gen,
                                      progress=bar.update)
        bar.close()
        self.metrics["replay"] = {
            "episodes": len(buf), "beliefs_available": available, "labels": int(info["labels"]), "skipped": int(info["skipped"]),
            "teacher_ms_per_label": info["teacher_ms"], "teacher_model_evals_per_label": info["model_evals"],
            "label_s": time.perf_counter() - t0,
        }

    def dagger_labels(self, r: int) -> None:
        """DAgger round `r` (from 0): `dagger_round` on its `dagger_episodes` seeds, without gradient steps."""
        cfg = self.cfg
        beta = 1.0 if (r == 0 and len(self.distiller) == 0) else cfg.dagger_beta
        seeds = [cfg.seed * 1000 + 100 + r * cfg.dagger_episodes + i for i in range(cfg.dagger_episodes)]
        t0 = time.perf_counter()
        res = dagger_round(self.env, self.model, self.distiller, self.teacher, self.factory, seeds=seeds,
                           beta=beta, noise=cfg.dagger_noise, generator=self.gen)
        res.update({"round": r + 1, "beta": beta, "seeds": seeds, "wall_s": time.perf_counter() - t0})
        self.metrics["rounds"].append(res)

    def dagger_steps(self, r: int) -> None:
        """The `dagger_steps` gradient steps after DAgger round `r` (from 0)."""
        t0 = time.perf_counter()
        self.fit(self.cfg.dagger_steps, f"round {r + 1}")
        res = self.metrics["rounds"][r]
        res.update({"wall_s": res["wall_s"] + time.perf_counter() - t0, "dataset": len(self.distiller)})
        if self.cfg.progress:
            tqdm.write(f"DAgger round {r + 1}: student return {res['mean_return']:.0f}, dataset {len(self.distiller)}")

    def evaluate(self) -> None:
        """The student and, with `eval_teacher`, the teacher on the same `eval_episodes` seeds."""
        cfg, m = self.cfg, self.metrics
        seeds = [cfg.eval_seed + i for i in range(cfg.eval_episodes)]
        if not seeds:
            return
        m["student"] = evaluate_planner(self.env, self.model, PolicyPlanner(self.distiller.policy), self.factory,
                                        seeds, progress=cfg.progress, desc="student eval")
        if cfg.eval_teacher:
            m["teacher_eval"] = evaluate_planner(self.env, self.model, self.teacher, self.factory, seeds,
                                                 progress=cfg.progress, desc="teacher eval")
            m.update(run_state.against_teacher(m["student"]["mean"], m["teacher_eval"]["mean"]))

    def write(self) -> DistillResult:
        """`policy.pt`, `loss.png`, `metrics.json`, then the finished run's `distiller.pt` into `cfg.out`."""
        from .plots import plot_distillation

        d, m, out = self.distiller, self.metrics, self.out
        save_policy(d.policy, out / "policy.pt")
        m.update({"phases": self.phase_steps, "steps": d.steps, "labels": d.labels,
                  "wall_s": run_state.wall_s(self), "loss_history": [l for _, l in d.history]})
        plot_distillation(m, out / "loss.png")
        atomic_write_text(out / "metrics.json", run_state.metrics_text(m))
        run_state.save(self, finished=True)
        return DistillResult(d, self.teacher, self.model, self.env, m, out)
