"""`latentplan suite`: a grid of training runs (task x recipe x seed), on Ray or in this process.

Each cell of the grid is one training run (`latentplan.training.Trainer`) in its own run folder
`out/cells/<task>/<recipe>/seed<k>/`, with its checkpoints, its resume and its final evaluation.
The cells run as Ray tasks (`ray.init()` on this machine by default, `address=` joins a cluster)
or, without Ray, one after the other in this process; every cell pins torch to `threads` threads,
so both give the same numbers for the same seeds. The grid resumes: a cell whose `result.json`
matches its configuration is skipped, an unfinished one resumes from its last checkpoint. A cell
that raises (or whose Ray worker dies) is retried `retries` times and, if it still fails, reported
in the table and `results.json` with its error; it is never dropped. The report (`results.json`,
`results.md`, `curves.png`) is written by `latentplan.suite_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from latentplan import envs as lp_envs

from . import io
from .config import TrainConfig
from .recipes import RECIPES, recipe_config

__all__ = ["Cell", "SuiteConfig", "SuiteResult", "cells_of", "run_cell", "run_suite"]

RESULT = "result.json"


@dataclass(frozen=True)
class SuiteConfig:
    """A grid of training runs.

    Attributes:
        tasks: task names or groups (`planet6`: PlaNet's six DeepMind Control tasks; `cartpole-swingup`;
            any `dmc:`/`gym:` name), see `latentplan.envs.resolve_tasks`.
        recipes: training recipes (`latentplan.recipes.RECIPES`: `planet`, `demo`, `fast`, `tiny`).
        seeds: one cell per seed per task and recipe.
        steps: environment steps per cell (action repeat included); a cell runs
            `ceil(steps / steps per episode)` episodes (1,000 steps per episode on the DeepMind
            Control tasks).
        out: the grid's folder: `cells/` (one run folder per cell), `results.json`, `results.md`, `curves.png`.
        action_repeat: override every task's action repeat (`None`: PlaNet's per-task value).
        evaluations: evaluations (one noise-free episode each) along each cell's learning curve.
        final_eval_episodes: episodes of each cell's final, fixed-seed evaluation (the table's return).
        ray: run the cells as Ray tasks (needs `pip install latentplan[ray]`); `False` runs them one
            after the other in this process.
        address: a Ray cluster to join (`auto`, `ray://host:10001`); `None` starts a local Ray.
        workers: CPUs of the local Ray (cells at once; one CPU per cell); ignored with `address`.
        threads: torch threads in each cell (the same in both modes, so results agree).
        retries: extra attempts for a cell that raised or whose worker died.
        object_store_mb: the local Ray's object store, in MiB (cells return small dicts).
        device: the cells' torch device (`cpu`, `cuda`, `auto`).
        gpus_per_cell: GPUs Ray reserves for each cell (e.g. 0.5 puts two cells on one GPU); Ray hides
            the GPUs from a cell that reserves none, so `device="cuda"` on Ray needs this > 0.
        progress: show the grid's progress bar (episodes done over all cells, read from their metrics,
            refreshed every 2 s on Ray and after each cell in-process; cells done and failed).
    """

    tasks: tuple[str, ...] = ("planet6",)
    recipes: tuple[str, ...] = ("demo",)
    seeds: tuple[int, ...] = (0,)
    steps: int = 100_000
    out: str = "runs/suite"
    action_repeat: int | None = None
    evaluations: int = 10
    final_eval_episodes: int = 5
    ray: bool = True
    address: str | None = None
    workers: int = 2
    threads: int = 1
    retries: int = 1
    object_store_mb: int = 100
    device: str = "cpu"
    gpus_per_cell: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        from latentplan.planners.validate import check_int

        check_int(self, "steps", "evaluations", "workers", "threads", "object_store_mb", minimum=1)
        check_int(self, "retries", "final_eval_episodes", minimum=0)
        check_int(self, "action_repeat", minimum=1, optional=True)
        g = float(self.gpus_per_cell)
        if g < 0 or (g > 1 and not g.is_integer()):
            raise ValueError(f"SuiteConfig.gpus_per_cell must be a fraction in [0, 1] or a whole number, "
                             f"got {self.gpus_per_cell}")
        unknown = [r for r in self.recipes if r not in RECIPES]
        if unknown or not self.recipes:
            raise ValueError(f"SuiteConfig.recipes: unknown {unknown or 'empty list'}; recipes: {', '.join(RECIPES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"SuiteConfig.seeds must be distinct and non-empty, got {list(self.seeds)}")
        lp_envs.resolve_tasks(self.tasks)  # raises for an unknown name


@dataclass(frozen=True)
class Cell:
    """One run of the grid: `config.run_dir` is its folder.

    Attributes:
        task, recipe, seed: its coordinates in the grid.
        config: its `TrainConfig` (resume on, progress off).
        threads: torch threads it runs with.
    """

    task: str
    recipe: str
    seed: int
    config: TrainConfig
    threads: int = 1

    @property
    def key(self) -> str:
        """`task/recipe/seed<k>`, the cell's name in tables and messages."""
        return f"{self.task}/{self.recipe}/seed{self.seed}"


#: TrainConfig fields that do not change a cell's numbers (a done cell stays done when they change)
NEUTRAL = frozenset({"run_dir", "resume", "overwrite", "progress", "tensorboard", "device", "max_wall_minutes",
                     "checkpoint_every", "max_nonfinite_updates"})


def _comparable(config: TrainConfig) -> dict:
    """The config as stored, less the fields that do not change the run's numbers."""
    return {k: v for k, v in io.config_dict(config).items() if k not in NEUTRAL}


def cells_of(cfg: SuiteConfig) -> list[Cell]:
    """The grid's cells in order (task, then recipe, then seed).

    Raises:
        ValueError: an unknown task or recipe (the message lists what exists).
    """
    root = Path(cfg.out).resolve() / "cells"
    cells = []
    for task in lp_envs.resolve_tasks(cfg.tasks):
        env = lp_envs.make(task, action_repeat=cfg.action_repeat, seed=0)
        per_episode = (env.max_episode_steps or 1000) * env.action_repeat
        env.close()
        episodes = max(1, math.ceil(cfg.steps / per_episode))
        slug = task.replace(":", "-").replace("/", "-")
        for recipe in cfg.recipes:
            for seed in cfg.seeds:
                config = recipe_config(
                    recipe, env=task, episodes=episodes, seed=seed, run_dir=str(root / slug / recipe / f"seed{seed}"),
                    action_repeat=cfg.action_repeat, final_eval_episodes=cfg.final_eval_episodes, resume=True,
                    progress=False, device=cfg.device,
                )
                trained = max(1, config.episodes - config.seed_episodes)
                config = dataclasses.replace(config, eval_every=max(1, trained // cfg.evaluations))
                cells.append(Cell(task, recipe, seed, config, cfg.threads))
    return cells


def curves(run_dir: str | os.PathLike) -> dict[str, list[list[float]]]:
    """A run's learning curves from its `metrics.jsonl`: `curve` (noise-free evaluations) and
    `train_curve` (every collected episode, exploration noise and seed episodes included), each
    `[[env_steps, return], ...]`."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = io.read_jsonl(path) if path.exists() else []
    return {"curve": [[r["env_steps"], r["eval_return"]] for r in rows if "eval_return" in r],
            "train_curve": [[r["env_steps"], r["train_return"]] for r in rows if "train_return" in r]}


def done_result(cell: Cell) -> dict | None:
    """The cell's stored result if it finished with exactly this configuration, else `None`."""
    path = Path(cell.config.run_dir) / RESULT
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("config") != _comparable(cell.config):
        return None
    return {**result, **curves(cell.config.run_dir)}


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train (or resume) one cell with torch pinned to `cell.threads` threads; write its `result.json`.

    Returns:
        `{"task", "recipe", "seed", "status": "done", "final_returns", "final_return", "final_return_ci",
        "episodes", "env_steps", "wall_s", "best_eval_return", "curve", "train_curve" (see `curves`), "config"}`.

    Raises:
        whatever the training raises (the grid retries and reports it).
    """
    import torch

    from .training import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(cell.threads)
    try:
        summary = Trainer(cell.config).run()
    finally:
        torch.set_num_threads(threads)
    result = {
        "task": cell.task, "recipe": cell.recipe, "seed": cell.seed, "status": "done",
        "final_returns": list(summary.final_returns), "final_return": summary.final_return,
        "final_return_ci": None if summary.final_return_ci is None else list(summary.final_return_ci),
        "episodes": summary.episodes, "env_steps": summary.env_steps, "wall_s": summary.wall_s,
        "best_eval_return": summary.best_eval_return,
        **curves(cell.config.run_dir), "config": _comparable(cell.config),
    }
    io.atomic_write_text(Path(cell.config.run_dir) / RESULT, json.dumps(result, indent=2))
    return result


@dataclass
class SuiteResult:
    """What a grid run gives back.

    Attributes:
        cells: one dict per cell (`run_cell`'s result, or `status: "failed"` with `error` and
            `attempts`), in grid order.
        skipped: cells found done and not rerun.
        out: the grid's folder.
    """

    cells: list[dict[str, Any]]
    skipped: int
    out: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The cells that failed every attempt."""
        return [c for c in self.cells if c["status"] != "done"]


def _failure(cell: Cell, err: BaseException | str, attempts: int) -> dict[str, Any]:
    text = err if isinstance(err, str) else "".join(traceback.format_exception_only(type(err), err)).strip()
    return {"task": cell.task, "recipe": cell.recipe, "seed": cell.seed, "status": "failed",
            "error": text[-2000:], "attempts": attempts}


def _run_sequential(cells: list[Cell], cfg: SuiteConfig, tick: Callable[[Cell | None, dict | None], None]
                    ) -> dict[str, dict]:
    out = {}
    for cell in cells:
        for attempt in range(1, cfg.retries + 2):
            try:
                out[cell.key] = {**run_cell(cell), "attempts": attempt}
                break
            except Exception as err:  # reported in the table, never dropped
                out[cell.key] = _failure(cell, err, attempt)
        tick(cell, out[cell.key])
    return out


def _ray_init(cfg: SuiteConfig):
    try:
        import ray
    except ImportError as err:
        raise ImportError("latentplan suite on Ray needs `pip install latentplan[ray]` (or pass --no-ray to run "
                          "the grid in this process)") from err
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if cfg.address is None:
            ray.init(num_cpus=cfg.workers, include_dashboard=False, object_store_memory=cfg.object_store_mb << 20,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=cfg.address, log_to_driver=False, configure_logging=False)
    return ray, started


def _run_ray(cells: list[Cell], cfg: SuiteConfig, tick: Callable[[Cell | None, dict | None], None]) -> dict[str, dict]:
    ray, started = _ray_init(cfg)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=cfg.gpus_per_cell, max_retries=0)(run_cell)
        pending = {remote.remote(cell): (cell, 1) for cell in cells}
        out = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            if not ready:
                tick(None, None)  # refresh the episodes done from the cells' metrics
            for ref in ready:
                cell, attempt = pending.pop(ref)
                try:
                    out[cell.key] = {**ray.get(ref), "attempts": attempt}
                except Exception as err:  # the task raised, or its worker died
                    cause = getattr(err, "cause", None) or err
                    if attempt <= cfg.retries:  # the retry resumes from the cell's last checkpoint
                        pending[remote.remote(cell)] = (cell, attempt + 1)
                        continue
                    out[cell.key] = _failure(cell, cause, attempt)
                tick(cell, out[cell.key])
        return out
    finally:
        if started:
            ray.shutdown()


def _episodes_done(cell: Cell) -> int:
    """Episodes the cell has logged so far (the last row of its `metrics.jsonl`)."""
    path = Path(cell.config.run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            row = json.loads(f.read().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return 0
    return min(int(row.get("episode", 0)), cell.config.episodes)


def run_suite(cfg: SuiteConfig) -> SuiteResult:
    """Run the grid `cfg` (skipping finished cells), then write its table, JSON and figure.

    Returns:
        The `SuiteResult` (its `files`: `json`, `markdown`, `figure`).

    Raises:
        ValueError: an unknown task or recipe.
        ImportError: `ray=True` without Ray installed (the message says how to install it).
        latentplan.io.RunFolderLocked: another suite runs in `out`.
    """
    from tqdm.auto import tqdm

    from .suite_report import write_report

    cells = cells_of(cfg)
    out_dir = Path(cfg.out).resolve()
    with io.RunLock(out_dir):
        io.atomic_write_text(out_dir / "grid.json", json.dumps(io.config_dict(cfg), indent=2))
        results = {c.key: {**r, "attempts": 0} for c in cells if (r := done_result(c)) is not None}
        todo = [c for c in cells if c.key not in results]
        bar = tqdm(total=sum(c.config.episodes for c in cells), disable=not cfg.progress, desc="suite", unit="episode")
        counts = {"done": len(results), "failed": 0}

        def tick(cell: Cell | None, result: dict | None) -> None:
            if result is not None:
                counts[result["status"]] += 1
            bar.n = sum(_episodes_done(c) for c in cells)
            bar.set_postfix_str(f"cells {counts['done']}/{len(cells)} done, {counts['failed']} failed"
                                + (f", last {cell.key}" if cell is not None else ""))
            bar.refresh()

        tick(None, None)

        t0 = time.perf_counter()
        if todo:
            results.update((_run_ray if cfg.ray else _run_sequential)(todo, cfg, tick))
        bar.close()
        result = SuiteResult([results[c.key] for c in cells], skipped=len(cells) - len(todo), out=str(out_dir))
        result.files = write_report(result, cfg, wall_s=time.perf_counter() - t0)
    return result
