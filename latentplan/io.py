"""Files: one checkpoint envelope for every trained part, atomic writes, and JSON-lines logs.

Every checkpoint latentplan writes is one envelope, a dict of plain tensors and Python values
that `torch.load(path, weights_only=True)` reads without running code:

    {"latentplan": VERSION, "kind": "run" | "model" | "critic" | "policy" | "distiller",
     "config": {...}, "state": {...}, "sha256": "<hex digest of config and state>"}

`kind` says what it holds, `config` how to rebuild it (plain JSON-able values), `state` its
tensors and counters. `save` writes atomically (a temporary file in the same folder, fsync,
rename), so a run killed mid-write leaves the previous file whole. `load` checks the kind, the
version and the digest (`content_digest`: a byte changed on disk that still unpickles, e.g.
inside a weight, is refused instead of loading other weights) and says what it found instead.
Envelopes written before the digest (no `sha256` key) still load. The typed helpers (`save_policy`, `load_critic`,
...) build and read the envelopes of each part.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = [
    "KINDS", "VERSION", "CheckpointError", "Envelope", "append_jsonl", "atomic_write", "atomic_write_text",
    "content_digest", "load",
    "load_critic", "load_distiller", "load_model", "load_policy", "read_jsonl", "RunFolderLocked", "RunLock", "save",
    "save_critic",
    "save_distiller", "save_model", "save_policy",
]

VERSION = 1
KINDS = ("run", "model", "critic", "policy", "distiller")


class CheckpointError(ValueError):
    """A file is not the latentplan checkpoint it was expected to be (another kind, another version,
    not a latentplan file at all); the message names what was found."""


@dataclass(frozen=True)
class Envelope:
    """A loaded checkpoint.

    Attributes:
        kind: what it holds (one of `KINDS`).
        version: the envelope version it was written with.
        config: how to rebuild it (plain values).
        state: tensors (`state_dict`s) and counters.
        path: the file it was read from.
        sha256: the `content_digest` of its config and state (verified against the one stored with
            it; computed on load for envelopes written before the digest).
    """

    kind: str
    version: int
    config: dict[str, Any]
    state: dict[str, Any]
    path: Path
    sha256: str = ""


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Write a file atomically: `write(file_object)` fills a temporary file in the same folder, which is
    flushed, fsync'ed and renamed over `path`. Readers see the old file or the new one, never half.

    Args:
        path: the destination (its folder is created).
        write: `callable(binary file object)`.

    Returns:
        `path` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text (JSON, CSV, ...)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _feed(h: Any, value: Any) -> None:
    """Feed `value` (nested dicts, lists, tensors, numpy arrays, plain scalars) into the hash `h`
    in a canonical order: dict keys sorted by their repr, each item tagged with its type."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif hasattr(value, "dtype") and hasattr(value, "tobytes"):  # numpy array or scalar
        h.update(f"N{value.dtype}{getattr(value, 'shape', ())}".encode())
        h.update(value.tobytes())
    else:
        h.update(f"S{type(value).__name__}:{value!r}".encode())


def content_digest(kind: str, config: dict[str, Any], state: dict[str, Any]) -> str:
    """The SHA-256 (hex) of an envelope's kind, config and state, over the values (each tensor's
    dtype, shape and bytes; keys in sorted order), so it is the same on every device and for
    every serialisation of the same values. `save` stores it, `load` checks it."""
    h = hashlib.sha256()
    _feed(h, [kind, config, state])
    return h.hexdigest()


def save(path: str | os.PathLike, kind: str, config: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write a checkpoint envelope atomically, with the `content_digest` of its config and state.

    Args:
        path: the `.pt` file.
        kind: one of `KINDS`.
        config: plain values that rebuild the object (dataclass fields via `asdict`, sizes, bounds).
        state: tensors and counters (moved to the CPU by the caller or `torch.save`'s pickler).

    Raises:
        ValueError: for an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"latentplan.io.save: kind must be one of {KINDS}; got {kind!r}")
    blob = {"latentplan": VERSION, "kind": kind, "config": config, "state": state,
            "sha256": content_digest(kind, config, state)}
    return atomic_write(path, lambda f: torch.save(blob, f))


def load(path: str | os.PathLike, kind: str | tuple[str, ...], *, device: str | torch.device = "cpu") -> Envelope:
    """Read a checkpoint envelope with weights-only loading (no code runs), mapped to `device`.

    Args:
        path: the `.pt` file.
        kind: the kind (or kinds) expected.
        device: where tensors are loaded.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is not a latentplan checkpoint, or of another kind or a newer
            version, or lacks its config or state, or its content does not match the digest stored
            with it (the file changed on disk after it was written).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p}")
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    try:
        blob = torch.load(p, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights_only refusal: a long text about trusting the source
        raise CheckpointError(f"{p} is not a latentplan checkpoint: it holds Python objects other than tensors and "
                              "plain values, which are never unpickled here (torch.load(weights_only=True) refused it)"
                              ) from err
    except Exception as err:  # truncated, or not a file torch.save wrote
        raise CheckpointError(f"{p} is not a readable latentplan checkpoint (truncated, or not written by torch.save: "
                              f"{type(err).__name__}: {err})") from err
    if not isinstance(blob, dict) or "latentplan" not in blob:
        raise CheckpointError(f"{p} is not a latentplan checkpoint (expected a {' or '.join(kinds)})")
    if blob["latentplan"] > VERSION:
        raise CheckpointError(f"{p} was written by a newer latentplan (checkpoint version {blob['latentplan']}, "
                              f"this one reads up to {VERSION})")
    if blob.get("kind") not in kinds:
        raise CheckpointError(f"{p} holds a {blob.get('kind')!r} checkpoint, not a {' or '.join(kinds)}")
    missing = [k for k in ("config", "state") if not isinstance(blob.get(k), dict)]
    if missing:
        raise CheckpointError(f"{p} is a malformed latentplan checkpoint: it has no {' and no '.join(missing)}")
    digest = content_digest(blob["kind"], blob["config"], blob["state"])
    stored = blob.get("sha256")
    if stored is not None and stored != digest:
        raise CheckpointError(f"{p} is corrupted: its content does not match the SHA-256 digest stored with it "
                              "(the file changed on disk after it was written)")
    return Envelope(blob["kind"], int(blob["latentplan"]), dict(blob["config"]), dict(blob["state"]), p, digest)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows (JSON objects) of a JSON-lines file, in order.

    A line that is not a JSON object (cut short by a kill while it was written) is skipped with
    a `RuntimeWarning` that counts them; nothing else is dropped.

    Raises:
        FileNotFoundError: no file at `path`.
    """
    rows, bad = [], []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(i + 1)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} line(s) that are not JSON objects (line {bad[0]}"
                      f"{', ...' if len(bad) > 1 else ''}), as a write cut short by a kill leaves", RuntimeWarning,
                      stacklevel=2)
    return rows


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a JSON-lines file (one `json.dumps` per line), flushed and fsync'ed.

    A file whose last line was cut short by a kill gets a line break first, so the new rows are
    never glued to the fragment (which `read_jsonl` then skips alone).
    """
    path = Path(path)
    cut = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a") as f:
        if cut:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def config_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as plain JSON-able values (tuples as lists), for an envelope's config."""
    return json.loads(json.dumps(asdict(config)))


# ----------------------------------------------------------------------------- the parts' envelopes
def save_model(model: Any, path: str | os.PathLike) -> Path:
    """Write an `RSSMWorldModel` alone (its `RSSMConfig` and weights) as a `model` envelope."""
    return save(path, "model", config_dict(model.config), _cpu(model.state_dict()))


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """An `RSSMWorldModel` in eval mode from a `model` envelope or a training checkpoint (`run`).

    Raises:
        FileNotFoundError / CheckpointError: as `load`.
    """
    from latentplan.worldmodels.rssm import RSSMConfig, RSSMWorldModel

    env = load(path, ("model", "run"), device=device)
    config, state = (env.config, env.state) if env.kind == "model" else (env.config["model"], env.state["model"])
    model = RSSMWorldModel(RSSMConfig.from_dict(config)).to(device)
    model.load_state_dict(state)
    return model.eval()


def save_policy(policy: Any, path: str | os.PathLike) -> Path:
    """Write a `GaussianPolicy` (sizes, action bounds, `PolicyConfig`, weights) as a `policy` envelope."""
    config = {"feature_dim": policy.feature_dim, "action_dim": policy.action_dim,
              "low": policy.action_low.cpu().tolist(), "high": policy.action_high.cpu().tolist(),
              "policy": config_dict(policy.config)}
    return save(path, "policy", config, _cpu(policy.state_dict()))


def load_policy(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """A `GaussianPolicy` in eval mode on `device` from a `policy` envelope (or a policy file written
    before the envelope, `{"format": "latentplan-policy-1", ...}`).

    Raises:
        FileNotFoundError / CheckpointError: as `load`.
    """
    from latentplan.planners.policy import GaussianPolicy, PolicyConfig

    try:
        env = load(path, "policy", device=device)
        config, state = env.config, env.state
    except CheckpointError:
        legacy = torch.load(path, map_location=device, weights_only=True)
        if not (isinstance(legacy, dict) and legacy.get("format") == "latentplan-policy-1"):
            raise
        config = {**legacy, "policy": legacy["config"]}
        state = legacy["state_dict"]
    policy = GaussianPolicy(config["feature_dim"], config["action_dim"], config["low"], config["high"],
                            PolicyConfig(**config["policy"]))
    policy.load_state_dict(state)
    return policy.to(device).eval()


def save_critic(learner: Any, path: str | os.PathLike) -> Path:
    """Write a `ValueLearner` (its `ValueConfig`, feature size, critic, target, optimiser) as a `critic` envelope."""
    config = {"value": config_dict(learner.config), "feature_dim": int(learner.value.feature_dim)}
    return save(path, "critic", config, learner.state_dict())


def load_critic(path: str | os.PathLike, *, feature_dim: int | None = None,
                device: str | torch.device = "cpu") -> Any:
    """A `ValueLearner` from a `critic` envelope, or the critic inside a training checkpoint made with
    `value_every > 0` (a `run` envelope, or one written before the envelope).

    Args:
        path: the file.
        feature_dim: the beliefs' feature size `D + S` the critic must take (checked when given;
            needed for a training checkpoint, whose critic takes its model's features).
        device: where the critic lives.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file holds no critic, or one for another feature size.
    """
    from latentplan.planners.value import ValueConfig, ValueLearner

    p = Path(path)
    try:
        env = load(p, ("critic", "run"), device=device)
        config, state = env.config, env.state
    except CheckpointError:
        config, state = {}, torch.load(p, map_location=device, weights_only=True)  # a pre-envelope run checkpoint
        if not isinstance(state, dict) or state.get("format") != 1:
            raise
    if "value_learner" in state:  # a training checkpoint: its model's features
        state = state["value_learner"]
        config = {"value": dict(state["config"]), "feature_dim": feature_dim}
    if "value" not in config or config.get("feature_dim") is None:
        raise CheckpointError(f"{p} holds no critic (a critic file, or a training checkpoint with value_every > 0)")
    if feature_dim is not None and config["feature_dim"] != feature_dim:
        raise CheckpointError(f"{p}: the critic takes {config['feature_dim']} features; the model's beliefs have "
                              f"{feature_dim}")
    value_config = ValueConfig(**{**config["value"], "hidden": tuple(config["value"]["hidden"])})
    learner = ValueLearner(value_config, int(config["feature_dim"]), device=device)
    learner.load_state_dict(state)
    learner.value.eval()
    return learner


def save_distiller(distiller: Any, path: str | os.PathLike, *, with_data: bool = True,
                   run: dict[str, Any] | None = None) -> Path:
    """Write a `Distiller` (student, optimiser, counters, and the labelled data set unless
    `with_data=False`) as a `distiller` envelope; its config rebuilds an empty one to load into.
    `run` (`{"config": ..., "state": ...}`, plain values and tensors) is stored beside it as
    `config["run"]` and `state["run"]`: a distillation run's resume state (`latentplan.distill_run_state`)."""
    policy = distiller.policy
    state = distiller.state_dict()
    if not with_data:
        state["data"] = {}
    config = {"distill": config_dict(distiller.config), "feature_dim": policy.feature_dim,
              "action_dim": policy.action_dim, "low": policy.action_low.cpu().tolist(),
              "high": policy.action_high.cpu().tolist()}
    if run is not None:
        config["run"], state["run"] = run["config"], run["state"]
    return save(path, "distiller", config, state)


def load_distiller(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """A `Distiller` from a `distiller` envelope (to continue distilling, or to read its data set).

    Raises:
        FileNotFoundError / CheckpointError: as `load`.
    """
    from latentplan.planners.distill import DistillConfig, Distiller

    env = load(path, "distiller", device=device)
    c = env.config
    distiller = Distiller(DistillConfig.from_dict(c["distill"]), c["feature_dim"], c["action_dim"], c["low"], c["high"],
                          device)
    distiller.load_state_dict(env.state)
    return distiller


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


# ----------------------------------------------------------------------------- run-folder locks
class RunFolderLocked(RuntimeError):
    """Another process holds the run folder's lock (it is training or resuming there); the message
    names it (pid, host, start time)."""


class RunLock:
    """An exclusive lock on a run folder for the life of a training or a resume: `run_dir/.lock`,
    held with `fcntl.flock` (released by the kernel if the process dies, so a killed run never
    leaves a stale lock), holding the holder's pid, host and start time for the error message.

    Args:
        run_dir: the folder (created if missing).

    Raises:
        RunFolderLocked: if another process (or another `RunLock` in this one) holds it.
    """

    NAME = ".lock"  #: the lock file's name in the run folder

    def _holder(self, wait_s: float = 1.0) -> str:
        """The holder's line from the lock file. The holder writes it just after taking the lock,
        so a racer that finds the lock taken waits up to `wait_s` for the line to appear."""
        import time

        end = time.monotonic() + wait_s
        while True:
            self._file.seek(0)
            line = self._file.read().strip()
            if line or time.monotonic() >= end:
                return line or "another process"
            time.sleep(0.02)

    def __init__(self, run_dir: str | os.PathLike) -> None:
        import datetime
        import fcntl
        import socket

        self.path = Path(run_dir) / self.NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self._file.close()
            raise RunFolderLocked(f"{self.path.parent} is in use by {holder}; wait for it to finish, or choose "
                                  "another --run-dir") from None
        self._file.seek(0)
        self._file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        self._file.flush()

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return not self._file.closed

    def release(self) -> None:
        """Release the lock (idempotent); the lock file stays, empty of meaning once unlocked."""
        if not self._file.closed:
            self._file.close()  # closing the descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
