"""Model updates per second: the ELBO's forward and backward over a batch of chunks, with the optimiser
step, as `Trainer.update` runs it, against the matrix-multiply floor measured in the same run.

    python benchmarks/train_speed.py                       # the demo's model and batch
    python benchmarks/train_speed.py --preset planet --repeats 10

Rows (one freshly initialised RSSM with vector observations, O = 5):

- `elbo`: `RSSMWorldModel.elbo` as it is (the posterior recursion keeps only what feeds the next
  step inside the loop; the prior, the KL and the linear layers' action and embedding parts run
  batched over all steps; the recursion is one autograd node with a hand-written backward through
  time, `PosteriorFilter`);
- `autograd`: the same with `manual_bptt = False`: the recursion recorded step by step for
  autograd, as `elbo` ran before `PosteriorFilter`;
- `compiled`: `elbo` with its pure part (`RSSMWorldModel.elbo_core`) compiled by `torch.compile`
  (inductor: C++/OpenMP on the CPU), forward and backward, as `TrainConfig.compile_update` runs
  it; its compile happens in the first warm-up update, reported as `first_s` (wall) and
  `first_cpu_s` (this process's time: dynamo's tracing and AOT's lowering; the C++ compiles run in
  subprocesses);
- `stepwise`: the same ELBO computed step by step, prior and posterior inside the loop
  (`stepwise_elbo`: how `elbo` computed it before; the tests check that both give the same loss and
  gradients), for a before/after ratio in one run.

Each update: `elbo` -> `zero_grad` -> `backward` -> `clip_grad_norm_(1000)` -> Adam step (lr 1e-3,
eps 1e-4; PyTorch's fused Adam, as `Trainer` uses). Times are medians over `--repeats` updates after `--warmup`, wall and process time
(the latter is less inflated on a machine shared with other work). The floor is the time of the
update's matrix products alone, forward and backward, at the model's shapes
(`floor.elbo_shapes`), measured before and after the rows (the mean is used).

Prints a table and writes `--json` (default benchmarks/results/train_speed.json).
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

import torch
import torch.nn.functional as F

import floor  # benchmarks/floor.py, next to this script
import latentplan as lp

PRESETS = {
    # name: (units, action dim, batch B, chunk T)
    "demo": (128, 1, 32, 32),
    "planet": (200, 6, 50, 50),
}


def stepwise_elbo(model: lp.RSSMWorldModel, obs, action, reward, is_first, generator=None):
    """PlaNet's ELBO (vector observations, no probes) computed step by step, prior and posterior
    inside the loop, as `RSSMWorldModel.elbo` did before its loop was restructured.

    Args: `obs [B, T, O]`, `action [B, T, A]`, `reward [B, T]`, `is_first [B, T]` bool; generator:
    the posterior samples' randomness (drawn in the order `elbo` draws them).

    Returns:
        `(loss, kl)`, scalars.
    """
    c = model.config
    b, t = action.shape[:2]
    embed = model.embed(obs.flatten(0, 1)).unflatten(0, (b, t))
    deter = torch.zeros(b, c.deter, device=obs.device)
    stoch = torch.zeros(b, c.stoch, device=obs.device)
    feats, kls = [], []
    for i in range(t):
        keep = (~is_first[:, i]).float()[:, None]
        x = F.elu(model.pre_gru(torch.cat([stoch * keep, action[:, i] * keep], -1)))
        deter = model.gru(x, deter * keep)
        p_mean, p_std = model._gaussian(model.prior_out(F.elu(model.prior_hidden(deter))))
        q_mean, q_std = model._gaussian(model.post_out(F.elu(model.post_hidden(torch.cat([deter, embed[:, i]], -1)))))
        stoch = q_mean + q_std * torch.randn(b, c.stoch, generator=generator, device=obs.device)
        kls.append((torch.log(p_std / q_std) + (q_std**2 + (q_mean - p_mean) ** 2) / (2 * p_std**2) - 0.5).sum(-1))
        feats.append(torch.cat([deter, stoch], -1))
    f = torch.stack(feats, 1).flatten(0, 1)
    recon = 0.5 * (((model.decoder(f) - obs.flatten(0, 1)) / c.observation_std) ** 2).sum(-1).mean()
    rew = 0.5 * (((model.reward_head(f).squeeze(-1) - reward.flatten()) / c.reward_std) ** 2).mean()
    kl = torch.stack(kls, 1).mean()
    return recon + c.reward_scale * rew + c.kl_scale * torch.clamp(kl, min=c.free_nats), kl


def make(preset: str, seed: int = 0):
    """The model, its optimiser and one batch of the preset's size."""
    units, a, b, t = PRESETS[preset]
    torch.manual_seed(seed)
    cfg = dataclasses.replace(lp.RSSMConfig(deter=units, hidden=units, embed=units), obs_shape=(5,), action_dim=a)
    model = lp.RSSMWorldModel(cfg).train()
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(b, t, 5, generator=g), torch.rand(b, t, a, generator=g) * 2 - 1, torch.randn(b, t, generator=g))
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4, fused=True), (*batch, is_first)


def update_fn(kind: str, model, opt, batch, generator):
    """One update of `kind` (`elbo`, `autograd`, `compiled` or `stepwise`) as a closure."""
    core = torch.compile(model.elbo_core) if kind == "compiled" else None
    model.manual_bptt = kind != "autograd"

    def update() -> None:
        if kind in ("elbo", "autograd", "compiled"):
            loss = model.elbo(*batch, generator=generator, core=core).loss
        else:
            loss, _ = stepwise_elbo(model, *batch, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        opt.step()
    return update


def measure_rows(preset: str, kinds: list[str], repeats: int, warmup: int) -> list[dict]:
    """Time every kind, interleaved update by update (so load affects them alike). The first
    warm-up update of each kind is timed apart (`first_s`, `first_cpu_s`: for `compiled` the
    compile, whose C++ compiles run in subprocesses and are not in this process's time)."""
    fns, wall, cpu = {}, {k: [] for k in kinds}, {k: [] for k in kinds}
    first = {}
    for k in kinds:
        model, opt, batch = make(preset)
        fns[k] = update_fn(k, model, opt, batch, torch.Generator().manual_seed(1))
        t0, p0 = time.perf_counter(), time.process_time()
        fns[k]()
        first[k] = (time.perf_counter() - t0, time.process_time() - p0)
        for _ in range(warmup - 1):
            fns[k]()
    for _ in range(repeats):
        for k in kinds:
            t0, p0 = time.perf_counter(), time.process_time()
            fns[k]()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - p0) * 1e3)
    return [{"preset": preset, "kind": k, "ms_median": statistics.median(wall[k]), "ms_all": wall[k],
             "cpu_ms_median": statistics.median(cpu[k]), "updates_per_s": 1e3 / statistics.median(wall[k]),
             "first_s": first[k][0], "first_cpu_s": first[k][1], "threads": torch.get_num_threads()} for k in kinds]


def main() -> None:
    """Parse flags, measure the floor and the rows, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="demo")
    p.add_argument("--kinds", nargs="*", default=["elbo", "autograd", "stepwise"],
                   choices=["elbo", "autograd", "compiled", "stepwise"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = p.parse_args()
    model, _, batch = make(args.preset)
    b, t = batch[1].shape[:2]
    shapes = floor.elbo_shapes(model.config, batch=b, chunk=t)
    floors = [floor.measure(shapes, repeats=3)]
    rows = measure_rows(args.preset, args.kinds, args.repeats, args.warmup)
    floors.append(floor.measure(shapes, repeats=3))
    f_ms, f_cpu = statistics.mean(f["ms"] for f in floors), statistics.mean(f["cpu_ms"] for f in floors)
    header = (f"{'preset':<8} {'kind':<10} {'ms/update':>9} {'updates/s':>9} {'x floor':>7} {'cpu ms':>7} "
              f"{'cpu x floor':>11} {'first s':>7} {'first cpu s':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        r.update(floor_ms=f_ms, x_floor=r["ms_median"] / f_ms, floor_cpu_ms=f_cpu, cpu_x_floor=r["cpu_ms_median"] / f_cpu)
        print(f"{r['preset']:<8} {r['kind']:<10} {r['ms_median']:>9.2f} {r['updates_per_s']:>9.1f} {r['x_floor']:>7.2f} "
              f"{r['cpu_ms_median']:>7.1f} {r['cpu_x_floor']:>11.2f} {r['first_s']:>7.1f} {r['first_cpu_s']:>11.1f}")
    print(f"floor ({b} chunks x {t} steps, forward + backward products): "
          + ", ".join(f"{f['ms']:.1f} ms wall, {f['cpu_ms']:.1f} ms cpu ({f['gflops']:.0f} GFLOP/s)" for f in floors)
          + f"; {floors[0]['gflop']:.2f} GFLOP per update, {torch.get_num_threads()} threads")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "preset": args.preset, "units_action_batch_chunk": PRESETS[args.preset], "floor": floors,
            "load_average": list(os.getloadavg())}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
