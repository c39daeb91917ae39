"""Milliseconds per planning decision: our planners in every compile mode, and peers, on the same weights.

    python benchmarks/plan_speed.py                                # CUDA if present, else CPU (small sweep)
    python benchmarks/plan_speed.py --devices cpu --batches 1 --repeats 5
    python benchmarks/plan_speed.py --devices cuda --batches 1 16 64 --peers --accuracy
    python benchmarks/plan_speed.py --devices cpu --preset demo --modes eager fused fused_compile

Rows, all on one freshly initialised RSSM of PlaNet's size (GRU 200, stochastic 30, hidden 200;
A = `--action-dim`, 6 as PlaNet's cheetah) whose weights every row shares (the weights do not
change the cost):

- our CEM at PlaNet's settings (H=12, I=10, J=1000, K=100) for B = `--batches` environments,
  in each of `--modes`: `eager` (the plain loop), `static` (the capture-ready search without
  capture), `cuda_graph` (captured once, replayed), `torch_compile`, and the same with the fused
  RSSM step (`FusedRSSM`, fp32 / tf32 / bf16 matrix products);
- with `--preset demo`, the same rows for the demo's model and planner instead (RSSM with 128
  units, A = 1, CEM H=12, I=5, J=100, K=10: `latentplan demo`'s decision);
- the fused search (`fused`: one pure function per CEM iteration, `planners.fused_search`) and
  the same compiled by inductor (`fused_compile`: C++/OpenMP on the CPU; its compile happens in
  the first warm-up call and is reported as `first_call_s`); `fused_compile addmm`: the same with
  the biases inside the products, as the compiled search ran before session 10
  (`worldmodels.fused.BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED = False` during its calls; a before/after
  in one run); `fused bf16` / `fused_compile bf16`:
  the same over `FusedRSSM(model, precision="bf16")`, every matrix product in bfloat16 (not exact:
  `--accuracy` measures what it does to the plans; peers are compared with it beside, never
  instead of, our fastest fp32 row);
- our CEM with the softmax-weighted refit (`refit="mppi"`, registry `cem_softmax`; one iteration
  from zero is MPPI's update without control cost) at 10,000 samples x H=12, one iteration, B=1
  (labelled "CEM softmax refit 10k x 12"; MPPI as published is `planners.mppi.MPPI`);
- our gradient planner (H=12, 8 restarts, 10 Adam steps), B=1;
- with `--peers`, and when they are installed: torchrl's `CEMPlanner` and stable-worldmodel's
  `CEMSolver` at PlaNet's settings, and pytorch_mppi's `MPPI` at 10,000 samples x 12, driven over
  the same model (`benchmarks/peers.py`; never dependencies of latentplan).

Times are medians over `--repeats` decisions after `--warmup` decisions (a capture happens in
the first warm-up call), one row after the other, or with `--interleave` round-robin over all rows
after all warm-ups (on a machine whose load changes, every row then sees the same load); on the CPU the process time of the same calls is recorded beside them
(`cpu_ms_median`), which a machine shared with other work inflates less than the wall time.

**The floor.** In the same run, before and after the rows, the script times the single-precision
matrix products of one decision alone, at the model's own shapes (`benchmarks/floor.py`), and
reports every CEM row as a multiple of that floor (`x_floor`: ms per decision / floor ms; the
floor is the mean of the two measurements, both recorded). On CUDA they are measured with CUDA events around the whole `plan`
call (Python included: that is the decision's latency); on the CPU with `time.perf_counter`.
`--accuracy` compares each reduced-precision plan with the fp32 plan of the same seed: the
return of the chosen first action (estimated by rolling out both plans' sequences 256 times
under the fp32 model) and the distance between the first actions.

With `--peers` it also prints each peer's time over ours (`peer_ratios`: against our fastest
PlaNet CEM row, and for pytorch_mppi also against the softmax refit of the same shapes; with
`--interleave` also the median of the ratios within each round).

Prints a table and writes the rows to `--json` (default benchmarks/results/plan_speed.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import floor  # benchmarks/floor.py, next to this script
import latentplan as lp
from latentplan.worldmodels import FusedRSSM, LatentState
from latentplan.worldmodels import fused as fused_module

PLANET = lp.CEMConfig(horizon=12, iterations=10, candidates=1000, elites=100)
DEMO = lp.CEMConfig(horizon=12, iterations=5, candidates=100, elites=10)
SOFTMAX_10K = lp.CEMConfig(horizon=12, iterations=1, candidates=10_000, elites=100, refit="mppi", temperature=1.0)
SOFTMAX_LABEL = "CEM softmax refit 10k x 12"
GRADIENT = lp.GradientConfig(horizon=12, iterations=10, restarts=8, init="zeros", optimizer="adam", max_evals=None)  # capture-ready


def device_name(device: str) -> str:
    """A readable name of `device` (the GPU's model, or the CPU with its thread count)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def time_ms(fn: Callable[[], object], device: str, *, repeats: int, warmup: int, cpu: list | None = None) -> list[float]:
    """Milliseconds of each of `repeats` calls of `fn` after `warmup` calls; CUDA events on CUDA.
    On the CPU, the process time of each call is appended to `cpu` when given."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0, p0 = time.perf_counter(), time.process_time()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
            if cpu is not None:
                cpu.append((time.process_time() - p0) * 1e3)
    return out


def make_model(action_dim: int, device: str, seed: int = 0, units: int = 200) -> lp.RSSMWorldModel:
    """PlaNet's RSSM (`units` = 200; the demo's: 128) with vector observations, freshly initialised
    from `seed`, in eval mode."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(lp.RSSMConfig(deter=units, hidden=units, embed=units), obs_shape=(5,), action_dim=action_dim)
    return lp.RSSMWorldModel(cfg).to(device).eval()


def beliefs(model: lp.RSSMWorldModel, batch: int, seed: int = 1) -> LatentState:
    """`[batch]` random beliefs (the cost does not depend on them)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return LatentState(torch.randn(batch, c.deter, generator=g), torch.randn(batch, c.stoch, generator=g)).to(model.device)


MODES = {
    # label: (compile mode, fused-model precision or None)
    "eager": ("eager", None),
    "static": ("static", None),
    "cuda_graph": ("cuda_graph", None),
    "torch_compile": ("torch_compile", None),
    "fused eager": ("eager", "fp32"),
    "fused cuda_graph": ("cuda_graph", "fp32"),
    "fused cuda_graph tf32": ("cuda_graph", "tf32"),
    "fused cuda_graph bf16": ("cuda_graph", "bf16"),
    "fused static bf16": ("static", "bf16"),
    "fused": ("fused", None),
    "fused_compile": ("fused_compile", None),
    # the same with the biases inside the products (inductor's addmm), as before session 10, for comparison
    "fused_compile addmm": ("fused_compile", None),
    # the fused search with bf16 matrix products (Objective(FusedRSSM(model, precision="bf16"))): not exact
    "fused bf16": ("fused", "bf16"),
    "fused_compile bf16": ("fused_compile", "bf16"),
}


def _planner_model(model: lp.RSSMWorldModel, precision: str | None):
    return model if precision is None else FusedRSSM(model, precision=precision)


def floor_ms(cfg, batch: int, floors: dict, field: str = "ms", extra: tuple = ()) -> float | None:
    """The mean measured floor (wall ms, or with `field="cpu_ms"` process ms) of one decision of
    `cfg` for `batch` beliefs, or None (for settings the floor does not cover: CEM+GD, the
    gradient planner)."""
    if not isinstance(cfg, lp.CEMConfig) or cfg.gradient is not None:
        return None
    key = (cfg.candidates, cfg.horizon, cfg.iterations, batch, *extra)
    f = floors.get(key)
    return None if f is None else statistics.mean(m[field] for m in f)


def measure_floors(model, cfgs: list[tuple[lp.CEMConfig, int]], floors: dict, bf16: bool = False) -> None:
    """Time the floor of every distinct `(config, B)` once more, appending to `floors` (called
    before and after the rows, so both measurements are recorded); with `bf16`, also the same
    products in bfloat16 (key `(..., "bf16")`), the floor of the bf16 rows."""
    distinct = {(cfg.candidates, cfg.horizon, cfg.iterations, b): (cfg, b) for cfg, b in cfgs if cfg.gradient is None}
    for key, (cfg, b) in distinct.items():
        shapes = floor.cem_shapes(model.config, action_dim=model.action_dim, rows=b * cfg.candidates,
                                  horizon=cfg.horizon, iterations=cfg.iterations)
        floors.setdefault(key, []).append(floor.measure(shapes, repeats=3))
        if bf16:
            floors.setdefault((*key, "bf16"), []).append(floor.measure(shapes, repeats=3, dtype=torch.bfloat16))


def our_jobs(args, cuda: bool) -> list[tuple]:
    """`(planner name, config, mode label, B)` of every row of ours."""
    modes = [m for m in args.modes if cuda or MODES[m][0] != "cuda_graph"]
    cem, cem_name = (DEMO, "CEM (demo)") if args.preset == "demo" else (PLANET, "CEM (PlaNet)")
    jobs = [(cem_name, cem, label, b) for b in args.batches for label in modes]
    if args.preset != "demo":
        for label in [m for m in modes if MODES[m][0] in ("eager", "cuda_graph") and MODES[m][1] in (None, "fp32")]:
            jobs.append((SOFTMAX_LABEL, SOFTMAX_10K, label, 1))
            jobs.append(("gradient (R8, 10 steps)", GRADIENT, label, 1))
    return jobs


def prepare_ours(model, device, args, jobs) -> list[dict]:
    """Our CEM (every mode, every B), the softmax-refit CEM 10k x 12 and the gradient planner, each
    built and called once (a capture or a compile happens in that first call, timed as
    `first_call_s`): one entry per row with its `decide` closure, for `time_rows`."""
    name = device_name(device)
    out = []
    for planner_name, cfg, label, b in jobs:
        mode, precision = MODES[label]
        pm = _planner_model(model, precision)
        state = beliefs(model, b)
        if isinstance(cfg, lp.GradientConfig):
            planner = lp.GradientPlanner(dataclasses.replace(cfg, compile=mode))
        else:
            planner = lp.CEM(dataclasses.replace(cfg, compile=mode))
        gen = torch.Generator(device=device).manual_seed(0)
        objective = lp.Objective(pm)  # built once: a new Objective per call would also reuse the capture

        def decide(planner=planner, objective=objective, state=state, gen=gen,
                   bias_outside=not label.endswith(" addmm")) -> None:
            # dynamo guards on the flag, so each value keeps its own compiled iteration
            fused_module.BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED = bias_outside
            try:
                planner.plan(objective, state, generator=gen)
            finally:
                fused_module.BIAS_OUTSIDE_PRODUCT_WHEN_COMPILED = True

        t0 = time.perf_counter()
        decide()  # the first call: a capture or a compile happens here
        first = time.perf_counter() - t0
        out.append({"name": name, "planner": planner_name, "mode": label, "batch": b, "evals": cfg.model_evals,
                    "decide": decide, "first": first, "warmup": max(args.warmup - 1, 0), "t0": t0,
                    "floor_key": (model, cfg, b)})
        print(f"  built {planner_name}, {label}, B={b} (first call {first:.1f} s)", flush=True)
    return out


def prepare_peers(model, device, args) -> list[dict]:
    """torchrl's CEMPlanner, stable-worldmodel's CEMSolver and pytorch_mppi's MPPI over the same
    model, those that are installed, as entries for `time_rows` (their first call is a warm-up)."""
    try:
        import peers  # benchmarks/peers.py, next to this script
    except ImportError:
        print("(benchmarks/peers.py not found: peers skipped)")
        return []
    name = device_name(device)
    state = beliefs(model, 1)
    made = [
        ("torchrl CEMPlanner (PlaNet)", PLANET.model_evals,
         lambda: peers.torchrl_cem(model, horizon=12, iterations=10, candidates=1000, elites=100, device=device)),
        ("stable-worldmodel CEMSolver (PlaNet)", PLANET.model_evals,
         lambda: peers.swm_cem(model, horizon=12, iterations=10, candidates=1000, elites=100, device=device)),
        ("pytorch_mppi MPPI 10k x 12", SOFTMAX_10K.model_evals,
         lambda: peers.pytorch_mppi(model, samples=10_000, horizon=12, device=device)),
    ]
    out = []
    for label, evals, make in made:
        try:
            peer = make()
        except Exception as e:  # a peer's API drift must not stop our rows
            print(f"({label}: {type(e).__name__}: {e})")
            continue
        if peer is None:
            print(f"({label}: not installed, skipped)")
            continue
        decide, version = peer
        cfg = SOFTMAX_10K if label.startswith("pytorch_mppi") else PLANET  # the same shapes, for the floor
        out.append({"name": name, "planner": label, "mode": version, "batch": 1, "evals": evals,
                    "decide": lambda decide=decide: decide(state), "first": None, "warmup": args.warmup,
                    "t0": time.perf_counter(), "floor_key": (model, cfg, 1)})
    return out


def time_rows(entries: list[dict], device: str, args, rows: list[dict]) -> None:
    """Time every entry's decisions and append its row to `rows`. By default one entry after the
    other (`--warmup` then `--repeats` calls each); with `--interleave`, all warm-ups first and then
    the timed calls round-robin (entry 1, 2, ..., n, 1, 2, ...), so that a machine whose load
    changes during the run slows every row alike and the ratios between rows stay meaningful."""
    if not args.interleave:
        for e in entries:
            cpu: list[float] = []
            times = time_ms(e["decide"], device, repeats=args.repeats, warmup=e["warmup"], cpu=cpu)
            rows.append(_row(e["name"], e["planner"], e["mode"], e["batch"], e["evals"], times, cpu, e["first"],
                             time.perf_counter() - e["t0"], floor_key=e["floor_key"]))
        return
    for e in entries:
        for _ in range(e["warmup"]):
            e["decide"]()
    wall = {id(e): [] for e in entries}
    cpu = {id(e): [] for e in entries}
    for _ in range(args.repeats):
        for e in entries:
            wall[id(e)] += time_ms(e["decide"], device, repeats=1, warmup=0, cpu=cpu[id(e)])
    for e in entries:
        rows.append(_row(e["name"], e["planner"], e["mode"], e["batch"], e["evals"], wall[id(e)], cpu[id(e)],
                         e["first"], time.perf_counter() - e["t0"], floor_key=e["floor_key"]))


def _row(name, planner, mode, b, evals, times, cpu, first, wall, floor_key) -> dict:
    med = statistics.median(times)
    row = {
        "device": name, "planner": planner, "mode": mode, "batch": b, "model_evals_per_env": evals,
        "ms_median": med, "ms_per_env_decision": med / b, "ms_all": times,
        "cpu_ms_median": statistics.median(cpu) if cpu else None, "cpu_ms_all": cpu, "first_call_s": first,
        "wall_s": wall, "_floor_key": floor_key,
    }
    print(f"  {name}: {planner}, {mode}, B={b}: {med:.2f} ms/decision", flush=True)
    return row


def real_beliefs(model, config, n: int, seed: int = 0) -> LatentState:
    """`[n]` posterior beliefs of a trained model along one episode of its environment with random
    actions (every 4th decision from the 8th on), so that the accuracy check plans from the kind
    of belief the model meets."""
    import numpy as np

    env = lp.make_env(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=seed)
    agent = lp.Agent(model, lp.CEM(horizon=1, iterations=1, candidates=1, elites=1))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    agent.reset(generator=gen)
    kept = []
    for t in range(8 + 4 * n):
        belief = agent.filter(obs)
        if t >= 8 and (t - 8) % 4 == 0:
            kept.append(belief)
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        agent.record(action)
        obs, *_ = env.step(action)
    return LatentState.cat(kept[:n])


def run_accuracy(model, device, args, states: LatentState | None = None) -> list[dict]:
    """Reduced-precision plans against the fp32 plan of the same seed (see the module docstring)."""
    name = device_name(device)
    cuda = device.startswith("cuda")
    precisions = ["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"]
    mode = "cuda_graph" if cuda else "fused"  # on the CPU: the fused search, the path a bf16 plan takes
    cfg = dataclasses.replace(PLANET, compile="eager")
    out = []
    state = states if states is not None else beliefs(model, args.accuracy_states, seed=7)
    n_states = state.batch
    ref = lp.CEM(cfg).plan(lp.Objective(model), state, generator=torch.Generator(device=device).manual_seed(0))
    judge = lp.Objective(model)

    def mean_return(actions: torch.Tensor) -> torch.Tensor:
        k = 256
        g = torch.Generator(device=device).manual_seed(123)
        with torch.no_grad():
            r = judge.returns(state.expand(k), actions.repeat_interleave(k, dim=0), generator=g)
        return r.reshape(n_states, k).mean(dim=1)

    r_ref = mean_return(ref.actions)
    for p in precisions:
        planner = lp.CEM(dataclasses.replace(PLANET, compile=mode))
        plan = planner.plan(lp.Objective(FusedRSSM(model, precision=p)), state,
                            generator=torch.Generator(device=device).manual_seed(0))
        r = mean_return(plan.actions)
        rel = ((r - r_ref).abs() / r_ref.abs().clamp_min(1e-6)).cpu()
        row = {
            "device": name, "precision": p, "mode": mode, "states": n_states,
            "return_fp32_plan": r_ref.mean().item(), "return_plan": r.mean().item(),
            "rel_return_diff_max": rel.max().item(), "rel_return_diff_median": rel.median().item(),
            "first_action_diff_max": (plan.actions[:, 0] - ref.actions[:, 0]).abs().max().item(),
        }
        out.append(row)
        print(f"{name:<34} fused {p:<5} ({mode:<10}) return {row['return_plan']:9.3f} vs fp32 eager "
              f"{row['return_fp32_plan']:9.3f}; |Δreturn| max {row['rel_return_diff_max']:.2%}, median "
              f"{row['rel_return_diff_median']:.2%}; |Δa0| max {row['first_action_diff_max']:.3f}")
    return out


def finish_rows(rows: list[dict], floors: dict) -> list[dict]:
    """Add each row's floor (`floor_ms`) and multiple of it (`x_floor`), and the same for the
    process time (`floor_cpu_ms`, `cpu_x_floor`)."""
    for row in rows:
        _, cfg, b = row.pop("_floor_key")
        f = floor_ms(cfg, b, floors)
        row["floor_ms"] = f
        row["x_floor"] = None if f is None else row["ms_median"] / f
        fc = floor_ms(cfg, b, floors, "cpu_ms")
        row["floor_cpu_ms"] = fc
        row["cpu_x_floor"] = None if fc is None or row["cpu_ms_median"] is None else row["cpu_ms_median"] / fc
        if "bf16" in row["mode"]:  # also against the floor of its own (bf16) products
            fb = floor_ms(cfg, b, floors, "cpu_ms", ("bf16",))
            row["floor_bf16_cpu_ms"] = fb
            row["cpu_x_floor_bf16"] = None if fb is None or row["cpu_ms_median"] is None else row["cpu_ms_median"] / fb
    return rows


def peer_ratios(rows: list[dict], paired: bool = False) -> list[dict]:
    """Each peer's time over ours, for wall and process time: against our fastest fp32 `CEM (PlaNet)` row
    (by process time, else wall time), against our fastest bf16 row when there is one, and, for pytorch_mppi, also against our softmax-refit row
    (the same 10k x 12 shapes). `median_ratio` is the ratio of the medians; with `paired` (rows
    timed with `--interleave`) `paired_median_ratio` is the median over rounds of the ratio within a
    round (the same load)."""
    key = (lambda r: r["cpu_ms_median"]) if all(r["cpu_ms_median"] for r in rows) else (lambda r: r["ms_median"])
    cem = [r for r in rows if r["planner"] == "CEM (PlaNet)" and "bf16" not in r["mode"]]
    ours_cem = min(cem, key=key) if cem else None
    bf16 = [r for r in rows if r["planner"] == "CEM (PlaNet)" and "bf16" in r["mode"]]
    ours_bf16 = min(bf16, key=key) if bf16 else None  # reported beside, never instead of, the fp32 row
    softmax = next((r for r in rows if r["planner"] == SOFTMAX_LABEL and r["mode"] == "eager"), None)
    out = []
    for peer in [r for r in rows if r["planner"].split(" ")[0] in ("torchrl", "stable-worldmodel", "pytorch_mppi")]:
        refs = [ours_cem, ours_bf16] + ([softmax] if peer["planner"].startswith("pytorch_mppi") else [])
        for ref in [r for r in refs if r is not None]:
            row = {"peer": peer["planner"], "ours": f"{ref['planner']}, {ref['mode']}"}
            for field, all_field, name in (("ms_median", "ms_all", "wall"), ("cpu_ms_median", "cpu_ms_all", "cpu")):
                if peer.get(field) is None or ref.get(field) is None:
                    continue
                row[f"{name}_median_ratio"] = peer[field] / ref[field]
                if paired and len(peer.get(all_field) or []) == len(ref.get(all_field) or []) > 0:
                    row[f"{name}_paired_median_ratio"] = statistics.median(
                        p / o for p, o in zip(peer[all_field], ref[all_field]))
            out.append(row)
    return out


def print_table(rows: list[dict], floors: dict) -> None:
    """The table: one line per row, with its multiple of the floor where there is one."""
    header = (f"{'device':<34} {'planner':<28} {'mode':<16} {'B':>3} {'ms/decision':>11} {'floor ms':>8} "
              f"{'x floor':>7} {'cpu ms':>8} {'cpu x floor':>11} {'first s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        fl = "" if r["floor_ms"] is None else f"{r['floor_ms']:.1f}"
        xf = "" if r["x_floor"] is None else f"{r['x_floor']:.2f}"
        cpu = "" if r["cpu_ms_median"] is None else f"{r['cpu_ms_median']:.1f}"
        cxf = "" if r["cpu_x_floor"] is None else f"{r['cpu_x_floor']:.2f}"
        first = "" if r["first_call_s"] is None else f"{r['first_call_s']:.1f}"
        print(f"{r['device']:<34} {r['planner']:<28} {r['mode']:<16} {r['batch']:>3} {r['ms_median']:>11.2f} "
              f"{fl:>8} {xf:>7} {cpu:>8} {cxf:>11} {first:>7}")
    for r in rows:
        if r.get("cpu_x_floor_bf16") is not None:
            print(f"{r['planner']}, {r['mode']}: {r['cpu_x_floor_bf16']:.2f} x the bf16 floor (process time)")
    for key, ms in floors.items():
        j, h, i, b = key[:4]
        kind = " (bf16 products)" if len(key) > 4 else ""
        print(f"floor{kind} J={j} H={h} I={i} B={b}: " + ", ".join(
            f"{m['ms']:.1f} ms wall, {m['cpu_ms']:.1f} ms cpu ({m['gflops']:.0f} GFLOP/s)" for m in ms)
              + f"; {ms[0]['gflop']:.1f} GFLOP per decision, {ms[0]['threads']} threads")


def cpu_bf16_flags() -> list[str]:
    """The CPU's bf16 matrix features (`amx_bf16`, `avx512_bf16`) from /proc/cpuinfo: without them
    bf16 products are emulated and far slower than fp32 (docs/benchmarks.md)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16"))


def main() -> None:
    """Parse flags, time every row on every device, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="*", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batches", nargs="*", type=int, default=None, help="B values (default: 1 16 64 on CUDA, 1 on CPU)")
    p.add_argument("--modes", nargs="*", default=None, choices=list(MODES),
                   help="default on CUDA: eager, cuda_graph, torch_compile, the fused graph modes; on CPU: eager, static, fused eager")
    p.add_argument("--repeats", type=int, default=None, help="default 30 on CUDA, 5 on CPU")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--action-dim", type=int, default=6, help="A (PlaNet's cheetah: 6; cartpole: 1)")
    p.add_argument("--preset", choices=["planet", "demo"], default="planet",
                   help="planet: PlaNet's RSSM and CEM (default); demo: latentplan demo's model (128 units, A=1) and CEM (I=5, J=100, K=10)")
    p.add_argument("--peers", action="store_true", help="also time torchrl's CEMPlanner, stable-worldmodel's CEMSolver and pytorch_mppi when installed")
    p.add_argument("--interleave", action="store_true",
                   help="time the rows' decisions round-robin after all warm-ups (ratios robust to a changing load)")
    p.add_argument("--accuracy", action="store_true", help="compare fused tf32/bf16 plans with fp32 plans")
    p.add_argument("--accuracy-states", type=int, default=16)
    p.add_argument("--checkpoint", default=None,
                   help="a trained checkpoint for --accuracy (default: the random-weight PlaNet RSSM of the speed rows)")
    p.add_argument("--skip-speed", action="store_true", help="only the --accuracy comparison")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "plan_speed.json"))
    args = p.parse_args()
    devices = args.devices or (["cuda"] if torch.cuda.is_available() else ["cpu"])
    load_start = list(os.getloadavg())
    rows: list[dict] = []
    accuracy: list[dict] = []
    floors: dict = {}
    ratios: list[dict] = []
    for dev in devices:
        cuda = dev.startswith("cuda")
        run_args = argparse.Namespace(**vars(args))
        run_args.batches = args.batches or ([1, 16, 64] if cuda else [1])
        run_args.modes = args.modes or (
            ["eager", "cuda_graph", "torch_compile", "fused cuda_graph", "fused cuda_graph tf32", "fused cuda_graph bf16"]
            if cuda else ["eager", "static", "fused", "fused_compile"]
        )
        run_args.repeats = args.repeats or (30 if cuda else 5)
        demo = args.preset == "demo"
        model = make_model(1 if demo else args.action_dim, dev, units=128 if demo else 200)
        if not args.skip_speed:
            jobs = our_jobs(run_args, cuda)
            cfgs = [(cfg, b) for _, cfg, _, b in jobs if isinstance(cfg, lp.CEMConfig)]
            cfgs += [(PLANET, 1), (SOFTMAX_10K, 1)] if args.peers and not demo else []
            bf16 = any("bf16" in m for m in run_args.modes)
            if not cuda:
                measure_floors(model, cfgs, floors, bf16)
            dev_rows: list[dict] = []
            entries = prepare_ours(model, dev, run_args, jobs)
            if args.peers and not demo:
                entries += prepare_peers(model, dev, run_args)
            time_rows(entries, dev, run_args, dev_rows)
            if not cuda:
                measure_floors(model, cfgs, floors, bf16)
            rows += finish_rows(dev_rows, floors)
            print_table(rows[-len(dev_rows):], floors)
            for r in peer_ratios(dev_rows, paired=args.interleave):
                ratios.append(r)
                paired = " (paired by round: " + ", ".join(
                    f"{r[k]:.2f} {k.split('_')[0]}" for k in ("wall_paired_median_ratio", "cpu_paired_median_ratio")
                    if k in r) + ")" if args.interleave else ""
                print(f"{r['peer']} / ours ({r['ours']}): {r.get('wall_median_ratio', float('nan')):.2f} wall, "
                      f"{r.get('cpu_median_ratio', float('nan')):.2f} process time{paired}")
        if args.accuracy:
            states = None
            if args.checkpoint:
                model, config, _ = lp.load_checkpoint(args.checkpoint, device=dev)
                states = real_beliefs(model, config, args.accuracy_states)
            accuracy += run_accuracy(model, dev, run_args, states)
            for row in accuracy:
                row.setdefault("model", args.checkpoint or "random-weight PlaNet RSSM")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    demo = args.preset == "demo"
    meta = {
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "preset": args.preset, "action_dim": 1 if demo else args.action_dim,
        "rssm": "demo (deter 128, stoch 30, hidden 128)" if demo else "PlaNet (deter 200, stoch 30, hidden 200)",
        "cem": "H=12 I=5 J=100 K=10" if demo else "H=12 I=10 J=1000 K=100",
        "softmax_refit": "10,000 samples x H=12, 1 iteration", "gradient": "H=12, 8 restarts, 10 Adam steps",
        "load_average": list(os.getloadavg()), "load_average_start": load_start, "interleave": args.interleave,
        "floor": {"x".join(map(str, k)) + " (J x H x I x B)": v for k, v in floors.items()},
        "cpu_bf16_flags": cpu_bf16_flags(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows, "peer_ratios": ratios, "accuracy": accuracy}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
