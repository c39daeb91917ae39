"""The matrix-multiply floor of a planning decision or a training update, measured on this machine.

    import floor                                   # benchmarks/ is on sys.path when run as a script
    shapes = floor.cem_shapes(model.config, action_dim=6, rows=1000, horizon=12, iterations=10)
    f = floor.measure(shapes)                      # {"ms": ..., "gflop": ..., "gflops": ...}

The floor of a workload is the time this machine takes for *only* its single-precision matrix
products, each at the model's own shapes and as often as the workload runs it, back to back on
preallocated operands (`torch.mm(a, b, out=c)`): no elementwise work, no sampling, no sorting, no
Python between steps. A planner or trainer cannot do the same arithmetic faster with these
kernels, so `ms / floor_ms` says how much time goes to everything else. It is measured in the same
run as the rows it judges, so machine load affects both alike.

Shapes, for PlaNet's RSSM (`RSSMConfig`: D = deter, S = stoch, Hd = hidden, A = actions, E =
embed, O = observation size), with N rows per model step:

- one prior step (`cem_shapes`): pre-GRU `[N, S + A] @ [S + A, Hd]`, the GRU's input and hidden
  products `[N, Hd] @ [Hd, 3D]` and `[N, D] @ [D, 3D]`, the prior's `[N, D] @ [D, Hd]` and
  `[N, Hd] @ [Hd, 2S]`; the reward head over all N * H visited beliefs `[NH, D + S] @ [D + S, Hd]`,
  `[NH, Hd] @ [Hd, Hd]`, `[NH, Hd] @ [Hd, 1]`; per iteration, H steps and one reward pass.
- one ELBO update (`elbo_shapes`, B chunks of T steps, vector observations): per step the prior
  step's five products and the posterior's `[B, D + E] @ [D + E, Hd]`, `[B, Hd] @ [Hd, 2S]`; over
  all B * T rows the encoder (O -> Hd -> Hd -> E), the decoder (D + S -> Hd -> Hd -> O) and the
  reward head (D + S -> Hd -> Hd -> 1). The backward pass of every product `x @ W` (`[m, k] @
  [k, n]`) is two products: `dY @ W^T` (`[m, n] @ [n, k]`) and `x^T @ dY` (`[k, m] @ [m, n]`).

FLOPs are 2 m k n per product.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import torch

Shape = tuple[int, int, int]
"""`(m, k, n)`: the product of an `[m, k]` and a `[k, n]` matrix."""


def _prior_step(c, a: int, n: int) -> list[Shape]:
    return [(n, c.stoch + a, c.hidden), (n, c.hidden, 3 * c.deter), (n, c.deter, 3 * c.deter),
            (n, c.deter, c.hidden), (n, c.hidden, 2 * c.stoch)]


def _mlp(n: int, i: int, hidden: int, o: int) -> list[Shape]:
    return [(n, i, hidden), (n, hidden, hidden), (n, hidden, o)]


def cem_shapes(config, *, action_dim: int, rows: int, horizon: int, iterations: int) -> Counter:
    """The products of one CEM decision (all iterations run) as a `Counter` of `(m, k, n) -> count`.

    Args:
        config: the model's `RSSMConfig`.
        action_dim: A.
        rows: model rows per step (B environments x candidates per iteration).
        horizon: H; iterations: I.
    """
    c = config
    out: Counter = Counter()
    for s in _prior_step(c, action_dim, rows):
        out[s] += horizon * iterations
    for s in _mlp(rows * horizon, c.deter + c.stoch, c.hidden, 1):
        out[s] += iterations
    return out


def elbo_shapes(config, *, batch: int, chunk: int) -> Counter:
    """The products of one ELBO update (forward and backward) on `batch` chunks of `chunk` steps.

    Args:
        config: the model's `RSSMConfig` (vector observations: `obs_shape = (O,)`).
        batch: B; chunk: T.
    """
    c = config
    o = c.obs_shape[0]
    fwd: Counter = Counter()
    per_step = _prior_step(c, c.action_dim, batch) + [(batch, c.deter + c.embed, c.hidden), (batch, c.hidden, 2 * c.stoch)]
    for s in per_step:
        fwd[s] += chunk
    n = batch * chunk
    for s in _mlp(n, o, c.hidden, c.embed) + _mlp(n, c.deter + c.stoch, c.hidden, o) + _mlp(n, c.deter + c.stoch, c.hidden, 1):
        fwd[s] += 1
    out = Counter(fwd)
    for (m, k, nn), count in fwd.items():
        out[(m, nn, k)] += count  # gradient of the input
        out[(k, m, nn)] += count  # gradient of the weight
    return out


def gflop(shapes: Counter) -> float:
    """Billions of floating-point operations of `shapes` (2 m k n per product)."""
    return sum(2 * m * k * n * count for (m, k, n), count in shapes.items()) / 1e9


def measure(shapes: Counter, *, repeats: int = 5, warmup: int = 1, dtype: torch.dtype = torch.float32) -> dict:
    """Time the products of `shapes` back to back on preallocated operands of `dtype` (float32: the
    floor; bfloat16: the floor of a search whose products run in bf16).

    Returns:
        `{"ms": median wall ms of one workload's products, "ms_all": [...], "cpu_ms": median process
        time (ms), "gflop": ..., "gflops": rate (wall), "threads": torch threads}`.
    """
    ops = []
    for (m, k, n), count in shapes.items():
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        ops.append((a, b, torch.empty(m, n, dtype=dtype), count))

    def once() -> None:
        for a, b, c, count in ops:
            for _ in range(count):
                torch.mm(a, b, out=c)

    for _ in range(warmup):
        once()
    times, cpu = [], []
    for _ in range(repeats):
        t0, p0 = time.perf_counter(), time.process_time()
        once()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - p0) * 1e3)
    ms = statistics.median(times)
    g = gflop(shapes)
    return {"ms": ms, "ms_all": times, "cpu_ms": statistics.median(cpu), "gflop": g, "gflops": g / (ms / 1e3),
            "threads": torch.get_num_threads()}
