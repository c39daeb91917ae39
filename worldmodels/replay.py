"""Episode replay buffer that samples fixed-length chunks for sequence-model training (PlaNet:
batches of 50 chunks x 50 steps). Episodes are kept whole and can be saved one file each, so
a killed run resumes with its data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["Episode", "ReplayBuffer"]

Episode = dict[str, np.ndarray]
"""One episode of T decisions as arrays of T + 1 rows:

- `obs` `[T+1, *obs_shape]` (float32 vectors or uint8 images), `obs[0]` from `reset()`;
- `action` `[T+1, A]` float32, `action[t]` led to `obs[t]` (`action[0]` is zeros);
- `reward` `[T+1]` float32, received on arriving at `obs[t]` (`reward[0]` is 0);
- `is_first` `[T+1]` bool, true only at row 0;
- optional extra keys (e.g. `state` `[T+1, D]` for probe targets) with the same leading length.
"""

_REQUIRED = ("obs", "action", "reward", "is_first")


class ReplayBuffer:
    """Whole episodes in memory; `sample` draws `[B, L]` chunks uniformly over valid start steps.

    Args:
        directory: if given, every added episode is also written to `directory/NNNNNN.npz`
            (and `load_directory` reads them back).
        seed: seed of the buffer's own `numpy.random.Generator` (its state is part of a checkpoint).

    Raises:
        ValueError (from `add`): an episode with missing keys, mismatched lengths, or NaN/inf
            observations, actions or rewards.
        ValueError (from `sample`): when no stored episode is at least `chunk_length` rows long.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, seed: int = 0) -> None:
        self.episodes: list[Episode] = []
        self.directory = Path(directory) if directory is not None else None
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def steps(self) -> int:
        """Number of stored transitions (decisions), summed over episodes."""
        return sum(len(e["reward"]) - 1 for e in self.episodes)

    @staticmethod
    def validate(episode: Episode) -> Episode:
        """Check keys, lengths and finiteness; return the episode with canonical dtypes."""
        missing = [k for k in _REQUIRED if k not in episode]
        if missing:
            raise ValueError(f"ReplayBuffer: episode lacks keys {missing}; needs {list(_REQUIRED)}")
        n = len(episode["reward"])
        bad = {k: len(v) for k, v in episode.items() if len(v) != n}
        if bad:
            raise ValueError(f"ReplayBuffer: episode arrays must all have {n} rows; got {bad}")
        if n < 2:
            raise ValueError("ReplayBuffer: an episode needs at least one transition (2 rows)")
        out = {k: np.asarray(v) for k, v in episode.items()}
        out["action"] = out["action"].astype(np.float32)
        out["reward"] = out["reward"].astype(np.float32)
        out["is_first"] = out["is_first"].astype(bool)
        for k in ("action", "reward") + (("obs",) if out["obs"].dtype != np.uint8 else ()):
            if not np.isfinite(out[k]).all():
                raise ValueError(f"ReplayBuffer: episode has NaN or inf in '{k}'")
        return out

    def add(self, episode: Episode) -> None:
        """Store one episode (validated) and write it to `directory` if one is set.

        The file is written atomically: to a temporary file of this process's own (so two writers
        never share one), fsync'ed, then renamed to `NNNNNN.npz`.
        """
        episode = self.validate(episode)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{len(self.episodes):06d}.npz"
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npz", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez_compressed(f, **episode)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self.episodes.append(episode)

    def load_directory(self, count: int | None = None) -> None:
        """Read episodes `000000.npz ...` from `directory` (the first `count` of them, if given).

        Files past `count` (collected after the checkpoint being resumed) are deleted so the
        run re-collects them.

        Raises:
            FileNotFoundError: if fewer than `count` episode files exist.
        """
        if self.directory is None:
            raise ValueError("ReplayBuffer.load_directory: the buffer has no directory")
        files = sorted(self.directory.glob("[0-9]" * 6 + ".npz"))
        if count is not None:
            if len(files) < count:
                raise FileNotFoundError(
                    f"ReplayBuffer: checkpoint expects {count} episodes in {self.directory}, found {len(files)}"
                )
            for extra in files[count:]:
                extra.unlink()
            files = files[:count]
        self.episodes = []
        for f in files:
            with np.load(f) as data:
                self.episodes.append({k: data[k] for k in data.files})

    def sample(self, batch_size: int, chunk_length: int) -> dict[str, torch.Tensor]:
        """Draw `batch_size` chunks of `chunk_length` consecutive rows, each from one episode.

        Every valid (episode, start) pair is equally likely. The first row of a chunk is not
        marked `is_first` unless it starts an episode; models start chunks from their initial
        belief anyway (as PlaNet does).

        Returns:
            dict of tensors `[B, L, ...]`: `obs`, `action`, `reward`, `is_first` and any extra keys.
        """
        starts = np.array([max(len(e["reward"]) - chunk_length + 1, 0) for e in self.episodes])
        if starts.sum() == 0:
            longest = max((len(e["reward"]) for e in self.episodes), default=0)
            raise ValueError(
                f"ReplayBuffer.sample: no episode has {chunk_length} rows (longest: {longest}); "
                "lower chunk_length or collect more data"
            )
        flat = self.rng.integers(0, starts.sum(), size=batch_size)
        ep_idx = np.searchsorted(np.cumsum(starts), flat, side="right")
        offsets = flat - (np.cumsum(starts) - starts)[ep_idx]
        keys = self.episodes[0].keys()
        out = {}
        for k in keys:
            out[k] = torch.from_numpy(
                np.stack([self.episodes[e][k][o : o + chunk_length] for e, o in zip(ep_idx, offsets)])
            )
        return out
