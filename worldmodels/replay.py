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
_FILE_PATTERN = "[0-9]" * 6 + ".npz"


def _layout(episode: Episode) -> dict[str, tuple]:
    """What every episode of one buffer must share: per key, the shape of one row and the dtype kind."""
    return {k: (tuple(v.shape[1:]), v.dtype.kind) for k, v in episode.items()}


def _describe(layout: dict[str, tuple]) -> str:
    return ", ".join(f"{k} [T+1, {', '.join(map(str, shape))}]".replace(", ]", "]") for k, (shape, _) in
                     sorted(layout.items()))


class ReplayBuffer:
    """Whole episodes in memory; `sample` draws `[B, L]` chunks uniformly over valid start steps.

    Every episode of one buffer has the same layout as the first: the same keys, the same
    per-row shape of each (`obs [T+1, *obs_shape]`, `action [T+1, A]`, `reward [T+1]`,
    `is_first [T+1]`, extras `[T+1, ...]`) and the same kind of observation (uint8 images or
    float vectors); only T differs. The buffer holds every episode it is given (no capacity).

    Files: with a `directory`, episode k of the folder is `directory/NNNNNN.npz` (k with six
    digits). The folder is append-only for `add`: a new buffer on a folder that already holds
    episode files numbers its episodes after the highest existing one, so no file is ever
    overwritten (the in-memory buffer then holds only what it was given; `load_directory` reads
    the folder). Only `load_directory(count)` deletes files: those past `count`, as a resumed run
    re-collects them.

    Args:
        directory: if given, every added episode is also written to `directory/NNNNNN.npz`
            (and `load_directory` reads them back).
        seed: seed of the buffer's own `numpy.random.Generator` (its state is part of a checkpoint).

    Raises:
        ValueError (from `add`): an episode with missing keys, mismatched lengths, NaN/inf
            observations, actions or rewards, an `is_first` that is not true at row 0 only, or a
            layout other than the first episode's (the message names the key).
        FileExistsError (from `add`): the episode's file appeared in the folder meanwhile (another
            writer); nothing is overwritten.
        ValueError (from `sample`): `batch_size` or `chunk_length` not an int >= 1, or no stored
            episode at least `chunk_length` rows long.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, seed: int = 0) -> None:
        self.episodes: list[Episode] = []
        self.directory = Path(directory) if directory is not None else None
        self.rng = np.random.default_rng(seed)
        self._layout: dict[str, tuple] | None = None
        self._next_file = self._scan()

    def _scan(self) -> int:
        """The number after the highest episode file in `directory` (0 for none)."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        numbers = [int(f.stem) for f in self.directory.glob(_FILE_PATTERN)]
        return max(numbers) + 1 if numbers else 0

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def steps(self) -> int:
        """Number of stored transitions (decisions), summed over episodes."""
        return sum(len(e["reward"]) - 1 for e in self.episodes)

    @staticmethod
    def validate(episode: Episode) -> Episode:
        """Check one episode's keys, shapes, lengths, `is_first` and finiteness; return it with
        canonical dtypes (`action`, `reward` float32, `is_first` bool).

        Args:
            episode: `obs [T+1, *obs_shape]`, `action [T+1, A]`, `reward [T+1]`, `is_first [T+1]`
                (true at row 0 only), extras `[T+1, ...]`, with T >= 1 (see `Episode`).

        Raises:
            TypeError: `episode` is not a dict of arrays.
            ValueError: a missing key, a wrong number of dimensions, mismatched lengths, fewer
                than 2 rows, an `is_first` that is not true at row 0 and false elsewhere, or
                NaN/inf in `obs` (float), `action` or `reward`.
        """
        if not isinstance(episode, dict):
            raise TypeError(f"ReplayBuffer: an episode must be a dict of arrays; got {type(episode).__name__}")
        missing = [k for k in _REQUIRED if k not in episode]
        if missing:
            raise ValueError(f"ReplayBuffer: episode lacks keys {missing}; needs {list(_REQUIRED)}")
        out = {k: np.asarray(v) for k, v in episode.items()}
        dims = {"action": 2, "reward": 1, "is_first": 1}
        for k, v in out.items():
            want = dims.get(k)
            if (want is not None and v.ndim != want) or v.ndim < 1 or (k == "obs" and v.ndim < 2):
                need = {1: "[T+1]", 2: "[T+1, A]"}.get(want, "[T+1, ...]")
                raise ValueError(f"ReplayBuffer: episode '{k}' must be {need}; got shape {list(v.shape)}")
        n = len(out["reward"])
        bad = {k: len(v) for k, v in out.items() if len(v) != n}
        if bad:
            raise ValueError(f"ReplayBuffer: episode arrays must all have {n} rows; got {bad}")
        if n < 2:
            raise ValueError("ReplayBuffer: an episode needs at least one transition (2 rows)")
        out["action"] = out["action"].astype(np.float32)
        out["reward"] = out["reward"].astype(np.float32)
        first = out["is_first"]
        if first.dtype != bool and not np.isin(first, (0, 1)).all():
            raise ValueError(f"ReplayBuffer: episode 'is_first' must be bool; got {first.dtype} {first[:8].tolist()}")
        out["is_first"] = first = first.astype(bool)
        if not first[0] or first[1:].any():
            raise ValueError(
                "ReplayBuffer: episode 'is_first' must be true at row 0 and false elsewhere (one episode per "
                f"add); got true at rows {np.flatnonzero(first)[:8].tolist()}"
            )
        for k in ("action", "reward") + (("obs",) if out["obs"].dtype != np.uint8 else ()):
            if not np.isfinite(out[k]).all():
                raise ValueError(f"ReplayBuffer: episode has NaN or inf in '{k}'")
        return out

    def _check_layout(self, episode: Episode, what: str) -> None:
        """Check `episode` against the buffer's first episode (keys, per-row shapes, dtype kinds);
        anything goes while the buffer has none."""
        layout = _layout(episode)
        if self._layout is None or layout == self._layout:
            return
        keys, have = set(self._layout), set(layout)
        if keys != have:
            diff = [f"extra {sorted(have - keys)}"] * bool(have - keys) + [f"missing {sorted(keys - have)}"] * bool(keys - have)
            raise ValueError(f"ReplayBuffer: {what} has keys {sorted(have)} ({', '.join(diff)}); the buffer's "
                             f"episodes have {sorted(keys)}")
        k = next(k for k in sorted(keys) if layout[k] != self._layout[k])
        (shape, kind), (want, want_kind) = layout[k], self._layout[k]
        raise ValueError(
            f"ReplayBuffer: {what} '{k}' is [T+1, {', '.join(map(str, shape))}] of dtype kind {kind!r}; the "
            f"buffer's episodes have [T+1, {', '.join(map(str, want))}] of kind {want_kind!r} "
            f"(layout: {_describe(self._layout)})"
        )

    def add(self, episode: Episode) -> None:
        """Store one episode (validated, and checked against the first episode's layout) and write
        it to `directory` if one is set, as the next free `NNNNNN.npz` (never over an existing file).

        The file is written atomically: to a temporary file of this process's own (so two writers
        never share one), fsync'ed, then renamed to `NNNNNN.npz`.

        Args:
            episode: see `Episode` and `validate`.

        Raises:
            TypeError / ValueError: see `validate`; ValueError for a layout other than the
                buffer's first episode's.
            FileExistsError: the file name was taken by another writer meanwhile.
        """
        episode = self.validate(episode)
        self._check_layout(episode, f"episode {len(self.episodes)}")
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self._next_file:06d}.npz"
            if path.exists():
                raise FileExistsError(f"ReplayBuffer.add: {path} exists (another writer?); not overwriting it")
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npz", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez_compressed(f, **episode)
                    f.flush()
                    os.fsync(f.fileno())
                try:  # a hard link fails if the name was taken meanwhile: never overwrite
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(f"ReplayBuffer.add: {path} exists (another writer?); not overwriting it") from None
                except OSError:  # a filesystem without hard links: the check above is what we have
                    os.replace(tmp, path)
                else:
                    Path(tmp).unlink()
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._next_file += 1
        if self._layout is None:
            self._layout = _layout(episode)
        self.episodes.append(episode)

    def load_directory(self, count: int | None = None) -> None:
        """Replace the buffer's episodes by those in `directory`, in file order (`000000.npz ...`):
        all of them, or the first `count`.

        With `count`, the files past the first `count` (collected after the checkpoint being
        resumed) are DELETED, so the run re-collects them; later `add`s continue after file
        `count - 1`.

        Args:
            count: None (read every file, delete nothing) or an int >= 0.

        Raises:
            ValueError: the buffer has no directory, `count` is not None or an int >= 0, or the
                files' episodes do not share one layout (keys, per-row shapes).
            FileNotFoundError: if fewer than `count` episode files exist.
        """
        if self.directory is None:
            raise ValueError("ReplayBuffer.load_directory: the buffer has no directory")
        if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0):
            raise ValueError(f"ReplayBuffer.load_directory: count must be None or an int >= 0; got {count!r}")
        files = sorted(self.directory.glob(_FILE_PATTERN))
        if count is not None:
            count = int(count)
            if len(files) < count:
                raise FileNotFoundError(
                    f"ReplayBuffer: checkpoint expects {count} episodes in {self.directory}, found {len(files)}"
                )
            for extra in files[count:]:
                extra.unlink()
            files = files[:count]
        episodes = []
        self._layout = None
        for f in files:
            with np.load(f) as data:
                episode = {k: data[k] for k in data.files}
            self._check_layout(episode, f"episode file {f.name}")
            if self._layout is None:
                self._layout = _layout(episode)
            episodes.append(episode)
        self.episodes = episodes
        self._next_file = self._scan()

    def sample(self, batch_size: int, chunk_length: int) -> dict[str, torch.Tensor]:
        """Draw `batch_size` chunks of `chunk_length` consecutive rows, each from one episode.

        Every valid (episode, start) pair is equally likely. The first row of a chunk is not
        marked `is_first` unless it starts an episode; models start chunks from their initial
        belief anyway (as PlaNet does).

        Args:
            batch_size: B >= 1, the number of chunks.
            chunk_length: L >= 1, rows per chunk (at most the longest episode's T + 1).

        Returns:
            dict of tensors `[B, L, ...]`: `obs`, `action`, `reward`, `is_first` and any extra keys.

        Raises:
            ValueError: `batch_size` or `chunk_length` not an int >= 1 (the message names it), or
                no stored episode has `chunk_length` rows.
        """
        for name, value in (("batch_size", batch_size), ("chunk_length", chunk_length)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ReplayBuffer.sample: {name} must be an int >= 1; got {value!r}")
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
