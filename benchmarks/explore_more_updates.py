"""Diagnostic for Plan2Explore's zero-shot gap: more world-model updates on a run's own data.

    OMP_NUM_THREADS=1 python benchmarks/explore_more_updates.py --run runs/explore_s0 \
        --out runs/explore_s0_more --updates 2250

Copies a finished run (its config, its last checkpoint or `--checkpoint`, and the stored
episodes up to that checkpoint) to `--out`, resumes it there, takes `--updates` more ELBO updates
(PlaNet's, `Trainer.update`: `batch_size x chunk_length` chunks drawn from the same replay
buffer; an explore run's ensemble takes its step too) without collecting anything, and writes
the checkpoint. The data are unchanged, so comparing the zero-shot return before and after
(`explore_cartpole.py --part zeroshot --explore-checkpoint <out>`) separates "the model is
under-trained for its data" from "the data lack the states the task needs". Apply it to both
runs of a pair, so that both get the same number of extra updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from latentplan.config import TrainConfig  # noqa: E402
from latentplan.exploration import make_trainer  # noqa: E402
from latentplan.training import read_run_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file of that run (default: its checkpoint.pt)")
    p.add_argument("--out", required=True, help="a new run folder (must not exist)")
    p.add_argument("--updates", type=int, required=True)
    args = p.parse_args()
    if args.updates < 1:
        raise SystemExit(f"--updates must be >= 1; got {args.updates}")
    src, out = Path(args.run), Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new --out")
    ckpt = Path(args.checkpoint) if args.checkpoint else src / "checkpoint.pt"
    episode = int(read_run_checkpoint(ckpt).state["episode"])
    (out / "episodes").mkdir(parents=True)
    for f in sorted((src / "episodes").glob("*.npz"))[:episode]:
        shutil.copy(f, out / "episodes" / f.name)
    shutil.copy(ckpt, out / "checkpoint.pt")
    shutil.copy(src / "config.json", out / "config.json")
    config = TrainConfig.from_dict(json.loads((src / "config.json").read_text()))
    config = dataclasses.replace(config, run_dir=str(out), resume=True, progress=False, episodes=episode)
    trainer = make_trainer(config)
    trainer.t_start = time.perf_counter()  # read by the checkpoint's wall-time field
    t0 = time.perf_counter()
    losses = [trainer.update() for _ in range(args.updates)]
    trainer.save_checkpoint()
    keys = [k for k in losses[0] if k != "skipped"]
    summary = {"run": str(src), "checkpoint": str(ckpt), "episode": episode, "updates": args.updates,
               "wall_s": time.perf_counter() - t0, "loadavg_1min": os.getloadavg()[0],
               "first_100": {k: float(np.mean([l[k] for l in losses[:100] if k in l])) for k in keys},
               "last_100": {k: float(np.mean([l[k] for l in losses[-100:] if k in l])) for k in keys},
               "threads": torch.get_num_threads()}
    (out / "more_updates.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
