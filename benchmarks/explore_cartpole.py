"""Plan2Explore on cartpole-swingup from state: coverage of the state space and zero-shot planning.

Train the two models first (the demo's RSSM and CEM, the same episodes and seeds; only the
collection objective differs), e.g.

    latentplan train --run-dir runs/task    ... --episodes 30 (the demo preset's other fields)
    latentplan train --run-dir runs/explore ... --episodes 30 --explore

then

    OMP_NUM_THREADS=1 python benchmarks/explore_cartpole.py --task-run runs/task --explore-run runs/explore \
        --episodes 30 --part coverage
    OMP_NUM_THREADS=1 python benchmarks/explore_cartpole.py ... --part zeroshot --which explore   # and task

Parts:

1. `coverage`: the share of a 20 x 20 grid over cart position [-1.8, 1.8] m (the rail's limits)
   x pole angle [-pi, pi] visited by the first `--episodes` training episodes of each run (all
   decisions' true observations, seed episodes included), and by as many episodes of uniform
   random actions with the same env seeds: equal env steps. A picture of the three visit maps.
2. `zeroshot`: one model (`--which`) plans with CEM (the demo's) for (a) the swing-up reward written
   in torch (`rewards_cartpole.swingup_reward`, on the decoded state), (b) its learned reward head
   (for the explored model: trained on the explored data, never planned for while collecting),
   `--eval-episodes` fixed-seed episodes each, env return; and (c) the cart-at-target reward
   (`rewards_cartpole.goal_reward`) for each of `--targets`, `--goal-episodes` episodes each (1 by
   default): the goal reward summed over the episode on the true states, and over the last 63
   decisions |x - target| and the share with the pole up (cos > 0.9). `--rewards` runs a subset of
   (a), (b), (c); it updates only those entries of an existing result file.

3. `diagnose`: why the explored model plans worse for the swing-up. (a) The share of each run's
   first `--episodes` episodes' observations in the states the swing-up task ends in: pole up
   (cos > 0.9), up and slow (also |angle vel| < 2 rad/s), balanced (cos > 0.95, |angle vel| < 1,
   |x vel| < 1, |x| < 0.5). (b) Each model's open-loop error on held-out episodes: episode
   `--episodes` of either run (collected after the last update of a model taken at that
   episode, so neither model trained on it); from every belief along it (posterior means),
   `--horizon` prior-mean steps with the recorded actions, decoded: the error of the known
   swing-up reward per decision, of its sum over the horizon (what CEM ranks candidates by),
   and of the decoded (x, cos, angle vel), split by whether the start state's pole is up.

4. `summary --tags T1 T2 ...`: the ratio explored / task-trained of the known swing-up return
   for each tag (one training seed each) and over them: the mean of the ratios and the ratio of
   the means, with the per-episode returns; the goal metrics side by side.

Each part writes `benchmarks/results/explore_cartpole_<part>[_<which>]<tag>.json`; `--part table`
merges them into the markdown tables printed (and `explore_cartpole<tag>.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import latentplan as lp  # noqa: E402
from latentplan.exploration import coverage  # noqa: E402
from latentplan.statistics import finite_json  # noqa: E402
from rewards_cartpole import (  # noqa: E402
    ACTION_REPEAT, goal_reward, run, swingup_reward, tail_metrics,
)

RESULTS = Path("benchmarks/results")
LOW, HIGH, BINS = (-1.8, -math.pi), (1.8, math.pi), (20, 20)
#: the grids measured: (name, low, high, bins) over (x, angle) or (x, angle, x velocity, angular velocity)
GRIDS = (
    ("x, angle 20x20", LOW, HIGH, BINS),
    ("x, angle 40x40", LOW, HIGH, (40, 40)),
    ("x, angle, x vel, angle vel 10^4", (*LOW, -8.0, -30.0), (*HIGH, 8.0, 30.0), (10, 10, 10, 10)),
)


def states_of(episodes: list[dict]) -> np.ndarray:
    """`[N, 4]` (cart x, pole angle, cart velocity, pole angular velocity) of every stored observation."""
    obs = np.concatenate([e["obs"] for e in episodes])
    return np.stack([obs[:, 0], np.arctan2(obs[:, 2], obs[:, 1]), obs[:, 3], obs[:, 4]], axis=1)


def stored_episodes(run_dir: str, n: int) -> list[dict]:
    files = sorted((Path(run_dir) / "episodes").glob("*.npz"))[:n]
    if len(files) < n:
        raise SystemExit(f"{run_dir} holds {len(files)} episodes; --episodes asks for {n}")
    return [dict(np.load(f)) for f in files]


def random_episodes(n: int, seed: int) -> list[dict]:
    """`n` episodes of uniform random actions with the training runs' env seeds."""
    env = lp.make_env("dmc:cartpole-swingup", seed=seed)
    g = torch.Generator().manual_seed(seed)
    return [lp.run_episode(env, None, seed=seed * 1_000_003 + i, generator=g)[0] for i in range(n)]


def part_coverage(args) -> dict:
    sources = {
        "exploration (disagreement)": stored_episodes(args.explore_run, args.episodes),
        "random actions": random_episodes(args.episodes, args.seed),
        "task-driven (learned reward)": stored_episodes(args.task_run, args.episodes),
    }
    out, maps = {}, {}
    for name, eps in sources.items():
        pts = states_of(eps)
        share, counts = coverage(pts[:, :2], LOW, HIGH, BINS)
        out[name] = {"coverage": share, "cells": int((counts > 0).sum()), "observations": int(len(pts)),
                     "env_steps": int(sum(len(e["obs"]) - 1 for e in eps) * ACTION_REPEAT),
                     "max_abs_x": float(np.abs(pts[:, 0]).max()),
                     "max_abs_x_velocity": float(np.abs(pts[:, 2]).max()),
                     "max_abs_angle_velocity": float(np.abs(pts[:, 3]).max()),
                     "grids": {g: coverage(pts[:, :len(b)], lo, hi, b)[0] for g, lo, hi, b in GRIDS}}
        maps[name] = counts
    picture(maps, out, args.figure)
    return out


def picture(maps: dict, out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.6), sharey=True)
    for ax, (name, counts) in zip(axes, maps.items()):
        ax.imshow(np.log1p(counts.T), origin="lower", aspect="auto", cmap="viridis",
                  extent=(LOW[0], HIGH[0], LOW[1], HIGH[1]))
        ax.set_title(f"{name}\ncoverage {100 * out[name]['coverage']:.1f} %", fontsize=9)
        ax.set_xlabel("cart position x (m)")
    axes[0].set_ylabel("pole angle (rad, 0 = upright)")
    fig.suptitle("cartpole-swingup: visits per cell (log), equal env steps", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def goal_return(episode: dict, target: float) -> float:
    """`goal_reward` of `rewards_cartpole` summed over the episode on the true arrival states."""
    obs, act = torch.as_tensor(episode["obs"][1:]), torch.as_tensor(episode["action"][1:])
    named = {"cart_x": obs[:, 0], "pole_cos": obs[:, 1], "pole_angvel": obs[:, 4]}
    return float(goal_reward(named, act, {"target_x": target}).sum())  # the user function itself


def part_zeroshot(args) -> dict:
    run_dir = args.explore_run if args.which == "explore" else args.task_run
    run_dir = getattr(args, f"{args.which}_checkpoint") or run_dir
    model, _, _ = lp.load_checkpoint(run_dir)
    env = lp.make_env("dmc:cartpole-swingup", seed=args.seed)
    seeds = [args.seed * 1_000_003 + 30_000_000 + i for i in range(args.eval_episodes)]
    out: dict = {"checkpoint": str(run_dir)}
    cem = None  # None: the demo's CEM (rewards_cartpole.DEMO_CEM), a fresh planner per episode
    if args.cem:
        candidates, iterations, elites = args.cem
        cem = lp.CEMConfig(horizon=12, iterations=iterations, candidates=candidates, elites=elites)
        out["cem"] = {"candidates": candidates, "iterations": iterations, "elites": elites}

    def planner():
        return None if cem is None else lp.CEM(cem)

    for label, rewards in (("swingup_known", [swingup_reward]), ("learned_head", None)):
        if label.split("_")[-1] not in args.rewards:
            continue
        t0 = time.perf_counter()
        rets = [run(model, env, rewards=rewards, context=None, seed=s, planner=planner())[1].ret for s in seeds]
        out[label] = {"returns": rets, "mean": float(np.mean(rets)), "wall_s": time.perf_counter() - t0}
        print(f"  {args.which} {label}: {np.round(rets, 1)}", flush=True)
    goals = []
    for k in range(args.goal_episodes if "goal" in args.rewards else 0):  # episode k of every target
        for i, t in enumerate(args.targets):
            ep, st = run(model, env, rewards=[goal_reward], context={"target_x": t}, seed=seeds[0] + 100 + i + 10 * k,
                         planner=planner())
            goals.append({"target_x": t, "episode": k, "goal_return": goal_return(ep, t), "env_return": st.ret,
                          **tail_metrics(ep, t)})
            print(f"  {args.which} goal {t:+.2f}: {goals[-1]}", flush=True)
    if goals:
        out["goal"] = goals
    return out


def state_shares(pts: np.ndarray) -> dict:
    """Shares of `[N, 4]` (x, angle, x vel, angle vel) states in the swing-up task's end states."""
    x, ang, xv, av = pts.T
    cos = np.cos(ang)
    return {"pole up (cos > 0.9)": float((cos > 0.9).mean()),
            "up and slow (|angle vel| < 2)": float(((cos > 0.9) & (np.abs(av) < 2)).mean()),
            "balanced (cos > 0.95, |angle vel| < 1, |x vel| < 1, |x| < 0.5)":
                float(((cos > 0.95) & (np.abs(av) < 1) & (np.abs(xv) < 1) & (np.abs(x) < 0.5)).mean())}


@torch.no_grad()
def open_loop_errors(model, episode: dict, horizon: int) -> dict:
    """Open-loop prediction errors of `model` along one stored episode (see `diagnose`).

    Beliefs are posterior means filtered along the episode; from each belief at t (t + horizon
    within the episode) the prior mean is rolled `horizon` steps with the recorded actions
    `action[t+1 .. t+horizon]` and decoded. Errors against the true observations `obs[t+k]`:
    per-decision known swing-up reward (8 x the step formula, as planned with), its sum over
    the horizon, and the decoded cart x, pole cos, pole angular velocity; split by the start
    state's pole (cos > 0.9 or not). Returns means of absolute errors per group.
    """
    obs = torch.as_tensor(episode["obs"], dtype=torch.float32)
    act = torch.as_tensor(episode["action"], dtype=torch.float32)
    first = torch.as_tensor(episode["is_first"]).bool()
    state = model.initial(1)
    beliefs = []
    for t in range(len(obs)):
        state = model.observe(state, act[t:t + 1], obs[t:t + 1], first[t:t + 1], sample=False)
        beliefs.append(state)
    starts = list(range(len(obs) - horizon))
    state = type(state)(torch.cat([beliefs[t].deter for t in starts]), torch.cat([beliefs[t].stoch for t in starts]))
    idx = torch.tensor(starts)
    r_pred, r_true, s_err = [], [], []
    for k in range(1, horizon + 1):
        a = act[idx + k]
        state = model.imagine_step(state, a, sample=False)
        dec = model.decode(state)
        true = obs[idx + k]
        named_true = {"cart_x": true[:, 0], "pole_cos": true[:, 1], "pole_angvel": true[:, 4]}
        named_pred = {n: dec[n].reshape(-1) for n in named_true}
        r_pred.append(swingup_reward(named_pred, a, {}))  # the reward planned with, on the decoded state
        r_true.append(swingup_reward(named_true, a, {}))
        s_err.append(torch.stack([(named_pred[n] - named_true[n]).abs() for n in named_true], -1))
    r_pred, r_true, s_err = torch.stack(r_pred, 1), torch.stack(r_true, 1), torch.stack(s_err, 1)  # [N, H(, 3)]
    up = obs[idx, 1] > 0.9
    out = {}
    for group, mask in (("all", torch.ones_like(up)), ("start pole up", up), ("start pole down", ~up)):
        if not mask.any():
            continue
        out[group] = {
            "starts": int(mask.sum()),
            "reward_abs_err_per_decision": float((r_pred - r_true)[mask].abs().mean()),
            "horizon_return_abs_err": float((r_pred - r_true)[mask].sum(1).abs().mean()),
            "horizon_return_true": float(r_true[mask].sum(1).mean()),
            "x_abs_err": float(s_err[mask][..., 0].mean()),
            "cos_abs_err": float(s_err[mask][..., 1].mean()),
            "angle_vel_abs_err": float(s_err[mask][..., 2].mean()),
        }
    return out


def part_diagnose(args) -> dict:
    runs = {"explore": args.explore_run, "task": args.task_run}
    out: dict = {"state_shares": {}, "open_loop": {}, "horizon": args.horizon}
    for w, run_dir in runs.items():
        out["state_shares"][w] = state_shares(states_of(stored_episodes(run_dir, args.episodes)))
    out["state_shares"]["random"] = state_shares(states_of(random_episodes(args.episodes, args.seed)))
    tests = {f"{w} run, episode {args.episodes}": stored_episodes(run_dir, args.episodes)[-1] for w, run_dir in runs.items()}
    for w, run_dir in runs.items():
        model, _, _ = lp.load_checkpoint(getattr(args, f"{w}_checkpoint") or run_dir)
        model.eval()
        out["open_loop"][f"{w} model"] = {name: open_loop_errors(model, ep, args.horizon) for name, ep in tests.items()}
    return out


def part_table(args) -> dict:
    cov = json.loads((RESULTS / f"explore_cartpole_coverage{args.tag}.json").read_text())
    zs = {w: json.loads((RESULTS / f"explore_cartpole_zeroshot_{w}{args.tag}.json").read_text())
          for w in ("explore", "task")}
    print("| data source | " + " | ".join(g for g, *_ in GRIDS) + " | max abs x, x vel, angle vel | env steps |")
    print("|---|" + "---|" * (len(GRIDS) + 2))
    for name, r in cov["results"].items():
        grids = " | ".join(f"{100 * r['grids'][g]:.1f} %" for g, *_ in GRIDS)
        print(f"| {name} | {grids} | {r['max_abs_x']:.2f}, {r['max_abs_x_velocity']:.1f}, "
              f"{r['max_abs_angle_velocity']:.1f} | {r['env_steps']:,} |")
    print("\n| model | swing-up, known reward | swing-up, learned head | goal return (mean over targets) | "
          "mean abs(x - target), last 63 | frac cos > 0.9, last 63 |")
    print("|---|---|---|---|---|---|")
    for w, z in zs.items():
        r = z["results"]
        g = r["goal"]
        print(f"| {w} | {r['swingup_known']['mean']:.1f} {np.round(r['swingup_known']['returns'], 1).tolist()} | "
              f"{r['learned_head']['mean']:.1f} {np.round(r['learned_head']['returns'], 1).tolist()} | "
              f"{np.mean([x['goal_return'] for x in g]):.1f} | {np.mean([x['mean_abs_x_error'] for x in g]):.3f} | "
              f"{np.mean([x['frac_cos_gt_0.9'] for x in g]):.2f} |")
    ratio = zs["explore"]["results"]["swingup_known"]["mean"] / zs["task"]["results"]["swingup_known"]["mean"]
    print(f"\nzero-shot known swing-up, explored / task-trained: {ratio:.3f} (issue's bar: >= 0.90)")
    return {"coverage": cov, "zeroshot": zs, "ratio_known_swingup": ratio}


def part_summary(args) -> dict:
    rows = []
    print("| tag | explored, known swing-up | task-trained, known swing-up | ratio | explored, learned head | "
          "task-trained, learned head | goal return explored / task | mean abs(x - target) explored / task |")
    print("|---|---|---|---|---|---|---|---|")
    for tag in args.tags:
        z = {w: json.loads((RESULTS / f"explore_cartpole_zeroshot_{w}{tag}.json").read_text())["results"]
             for w in ("explore", "task")}
        row = {"tag": tag}
        for w in ("explore", "task"):  # results of a `--rewards known` run have no head or goal rows
            goal = z[w].get("goal", [])
            row[w] = {"known": z[w]["swingup_known"]["returns"],
                      "learned": z[w].get("learned_head", {}).get("returns", [float("nan")]),
                      **{key: float(np.mean([g[key] for g in goal])) if goal else float("nan")
                         for key in ("goal_return", "mean_abs_x_error", "frac_cos_gt_0.9")}}
        row["ratio"] = float(np.mean(row["explore"]["known"]) / np.mean(row["task"]["known"]))
        rows.append(row)
        e, t = row["explore"], row["task"]
        print(f"| {tag} | {np.mean(e['known']):.1f} {np.round(e['known'], 1).tolist()} | "
              f"{np.mean(t['known']):.1f} {np.round(t['known'], 1).tolist()} | {100 * row['ratio']:.1f} % | "
              f"{np.mean(e['learned']):.1f} | {np.mean(t['learned']):.1f} | {e['goal_return']:.1f} / {t['goal_return']:.1f} | "
              f"{e['mean_abs_x_error']:.3f} / {t['mean_abs_x_error']:.3f} |")
    ratios = [r["ratio"] for r in rows]
    pooled = {w: float(np.mean([x for r in rows for x in r[w]["known"]])) for w in ("explore", "task")}
    out = {"rows": rows, "mean_ratio": float(np.mean(ratios)), "min_ratio": float(np.min(ratios)),
           "max_ratio": float(np.max(ratios)), "pooled_means": pooled,
           "ratio_of_pooled_means": pooled["explore"] / pooled["task"],
           "goal_return_mean": {w: float(np.mean([r[w]["goal_return"] for r in rows])) for w in ("explore", "task")},
           "mean_abs_x_error_mean": {w: float(np.mean([r[w]["mean_abs_x_error"] for r in rows]))
                                     for w in ("explore", "task")}}
    out.update(_ratio_uncertainty(rows, ratios))
    print(f"\nratio explored / task-trained, known swing-up: per tag {np.round(100 * np.array(ratios), 1).tolist()} %, "
          f"mean {100 * out['mean_ratio']:.1f} %, worst {100 * out['min_ratio']:.1f} %; of the pooled means "
          f"{pooled['explore']:.1f} / {pooled['task']:.1f} = {100 * out['ratio_of_pooled_means']:.1f} % (bar: >= 90 %)")
    lo, hi = out["pooled_ratio_bootstrap_95"]
    print(f"pooled ratio, hierarchical bootstrap 95 %: [{lo:.3f}, {hi:.3f}]; one-sided 95 % t lower bound on the "
          f"mean of the per-tag ratios: {out['mean_ratio_t_lower_95']:.3f}; goal return explored / task "
          f"{out['goal_return_mean']['explore']:.1f} / {out['goal_return_mean']['task']:.1f}")
    return out


def _ratio_uncertainty(rows: list[dict], ratios: list[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """How sure the pooled ratio is: a hierarchical bootstrap (resample the training seeds, then each
    chosen seed's evaluation episodes, for both models; the ratio of the pooled means; percentile
    95 % interval), and a one-sided 95 % Student-t lower bound on the mean of the per-seed ratios
    (scipy.stats.t)."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    k = len(rows)
    draws = np.empty(resamples)
    for i in range(resamples):
        pick = rng.integers(0, k, size=k)
        means = {}
        for w in ("explore", "task"):
            vals = [np.asarray(rows[j][w]["known"])[rng.integers(0, len(rows[j][w]["known"]), len(rows[j][w]["known"]))]
                    for j in pick]
            means[w] = np.mean(np.concatenate(vals))
        draws[i] = means["explore"] / means["task"]
    r = np.asarray(ratios)
    t_low = float(r.mean() - stats.t.ppf(0.95, k - 1) * r.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
    return {"pooled_ratio_bootstrap_95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "mean_ratio_t_lower_95": t_low, "bootstrap_resamples": resamples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task-run", default="runs/task")
    p.add_argument("--explore-run", default="runs/explore")
    p.add_argument("--task-checkpoint", default=None, help="a checkpoint file to use instead of the run's last")
    p.add_argument("--explore-checkpoint", default=None, help="a checkpoint file to use instead of the run's last")
    p.add_argument("--episodes", type=int, default=30, help="training episodes compared (equal env steps)")
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--cem", type=int, nargs=3, metavar=("J", "I", "K"), default=None,
                   help="zeroshot: plan with CEM of J candidates, I iterations, K elites (H = 12) instead of the demo's "
                        "(J=100, I=5, K=10); e.g. --cem 1000 10 100 for PlaNet's")
    p.add_argument("--targets", type=float, nargs="+", default=[1.0, -1.0])
    p.add_argument("--goal-episodes", type=int, default=1,
                   help="zeroshot: episodes per goal target (episode 0 is the one earlier results used)")
    p.add_argument("--rewards", nargs="+", choices=("known", "head", "goal"), default=["known", "head", "goal"],
                   help="zeroshot: which of the three to run (known swing-up reward, learned head, goals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--part", choices=("coverage", "zeroshot", "diagnose", "table", "summary"), required=True)
    p.add_argument("--tags", nargs="+", default=[], help="summary: the tags (one per training seed) to merge")
    p.add_argument("--horizon", type=int, default=12, help="diagnose: open-loop steps (the demo CEM's H)")
    p.add_argument("--which", choices=("explore", "task"), default="explore")
    p.add_argument("--figure", default="docs/img/explore_coverage.png")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _20ep)")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.part in ("table", "summary"):
        data = part_table(args) if args.part == "table" else part_summary(args)
        name = f"explore_cartpole{'_summary' if args.part == 'summary' else ''}{args.tag}.json"
    else:
        data = {"results": {"coverage": part_coverage, "zeroshot": part_zeroshot, "diagnose": part_diagnose}[args.part](args)}
        name = f"explore_cartpole_{args.part}" + (f"_{args.which}" if args.part == "zeroshot" else "") + f"{args.tag}.json"
        print(json.dumps(data["results"], indent=1)[:3000])
        earlier = RESULTS / name
        if args.part == "zeroshot" and earlier.exists():  # a run of some of the rewards updates only those
            old = json.loads(earlier.read_text())
            data["results"] = {**old["results"], **data["results"]}
            data["earlier_meta"] = old.get("meta")
    data["meta"] = {"args": vars(args), "threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0],
                    "wall_s": time.perf_counter() - t0, "torch": torch.__version__, "machine": platform.machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(finite_json(data), indent=2, allow_nan=False))  # NaN (no head/goal rows): null
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
