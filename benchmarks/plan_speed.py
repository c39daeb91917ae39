"""Milliseconds per CEM decision, at PlaNet's settings and at the demo's, on CPU and (when present) CUDA.

    python benchmarks/plan_speed.py                 # CPU, and CUDA if available
    python benchmarks/plan_speed.py --devices cpu --repeats 5 --json out.json

Each row plans one decision for B environments with a freshly initialised RSSM of the stated size
(the weights do not change the cost). Times are medians over `--repeats` decisions after
`--warmup` decisions; on CUDA they are measured with CUDA events. The table goes to stdout and the
rows to a JSON file (default `benchmarks/results/plan_speed.json`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.config import demo_config

PLANET = lp.CEMConfig()  # H=12, I=10, J=1000, K=100


def _cases():
    demo = demo_config()
    return [
        ("PlaNet CEM, PlaNet RSSM", lp.RSSMConfig(), PLANET, 1),
        ("demo CEM, demo RSSM", demo.model, demo.planner, 1),
        ("demo CEM, demo RSSM, B=16", demo.model, demo.planner, 16),
    ]


def measure(model_cfg: lp.RSSMConfig, cem_cfg: lp.CEMConfig, batch: int, device: str,
            *, action_dim: int, repeats: int, warmup: int) -> list[float]:
    """Wall-clock ms of `repeats` CEM decisions for `batch` beliefs on `device`."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(model_cfg, obs_shape=(5,), action_dim=action_dim)
    model = lp.RSSMWorldModel(cfg).to(device).eval()
    cem = lp.CEM(cem_cfg)
    state = model.initial(batch)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            cem.plan(lp.Objective(model), state, generator=gen)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            cem.plan(lp.Objective(model), state, generator=gen)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return times


def main() -> None:
    """Parse flags, run every case on every device, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda if available")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--action-dim", type=int, default=1, help="A (cartpole: 1; PlaNet's cheetah: 6)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "plan_speed.json"))
    args = p.parse_args()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = []
    header = f"{'device':<28} {'case':<28} {'B':>3} {'H·I·J':>8} {'ms/decision':>12} {'ms/env-decision':>16}"
    print(header)
    print("-" * len(header))
    for dev in devices:
        name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
        for label, mcfg, ccfg, batch in _cases():
            times = measure(mcfg, ccfg, batch, dev, action_dim=args.action_dim, repeats=args.repeats, warmup=args.warmup)
            med = statistics.median(times)
            rows.append({
                "device": name, "case": label, "batch": batch, "model_evals_per_env": ccfg.model_evals,
                "deter": mcfg.deter, "hidden": mcfg.hidden, "stoch": mcfg.stoch, "action_dim": args.action_dim,
                "horizon": ccfg.horizon, "iterations": ccfg.iterations, "candidates": ccfg.candidates,
                "elites": ccfg.elites, "ms_median": med, "ms_all": times, "ms_per_env_decision": med / batch,
            })
            print(f"{name:<28} {label:<28} {batch:>3} {ccfg.model_evals:>8} {med:>12.1f} {med / batch:>16.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
