"""PlaNet's recurrent state-space model (RSSM) with its ELBO (Hafner et al. 2019, "Learning Latent
Dynamics for Planning from Pixels", Sections 3 and 4; architecture in their Appendix A).

The latent state is a deterministic GRU state h_t (200 units) and a stochastic state z_t, a 30-dim
diagonal Gaussian with a minimum standard deviation of 0.1. The prior p(z_t | h_t) drives
imagination; the posterior q(z_t | h_t, o_t) filters observations.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .filter_bptt import posterior_filter
from .networks import MLP, ConvDecoder, ConvEncoder, postprocess_image, preprocess_image
from .state import LatentState, WorldModelBase, check_count, check_step

__all__ = ["RSSMConfig", "RSSMWorldModel", "ELBOTerms"]


@dataclass(frozen=True)
class RSSMConfig:
    """Architecture and loss of the RSSM world model. Defaults are PlaNet's.

    Attributes:
        obs_shape: shape of one observation: `(D,)` for state vectors, `(3, 64, 64)` for images
            (`()` until filled from the environment by the training loop).
        action_dim: A, the action dimension (0 until filled from the environment).
        action_low: lower action bound per dimension (length A).
        action_high: upper action bound per dimension (length A).
        deter: units of the deterministic GRU state h (PlaNet: 200).
        stoch: dimension of the stochastic state z (PlaNet: 30).
        hidden: units of every hidden layer (PlaNet: 200).
        embed: output size of the vector-observation encoder (image encoder: 1024, fixed).
        min_std: floor of the stochastic state's standard deviation (PlaNet: 0.1).
        obs_std: fixed standard deviation of the Gaussian observation decoder. `None` picks
            PlaNet's 1.0 for images and 0.1 for state vectors: with std 1 an error of 0.1 in a
            5-dim state costs almost nothing, the latent then encodes the state coarsely and
            planning suffers (measured on cartpole-swingup: docs/benchmarks.md).
        reward_std: fixed standard deviation of the Gaussian reward decoder (PlaNet: 1).
        free_nats: KL below this many nats per step is not penalised (PlaNet: 3).
        kl_scale: weight of the KL term.
        reward_scale: weight of the reward log-likelihood.
        image_bits: bit depth images are quantised to (PlaNet: 5).
        obs_names: named slices of a state observation, `(name, start, stop)` triples, so
            that `decode()` can return `obs["position"]` etc.
        probe_dim: size of the environment's physical state vector that probe heads learn to
            decode from the latent (0: no probes). The training loop sets it for pixel models,
            whose episodes store the env's state (`info["state"]`) as the probe targets, so that
            known rewards over named quantities (`obs["cart_x"]`) work for pixel models too.
        probe_names: named slices of the probe state, `(name, start, stop)` triples, as
            `obs_names` (e.g. `("cart_x", 0, 1)`).
        probe_std: fixed standard deviation of the probes' Gaussian log-likelihood.
        probe_detach: if True (default) the probe loss does not reach the world model: the probes
            read what the latent already holds (linear/MLP probes in the sense of Alain & Bengio
            2016) and the model is trained exactly as PlaNet's. If False the auxiliary loss also
            shapes the latent.

    `validate()` (called when an `RSSMWorldModel` is built) checks every field: sizes are ints
    (`deter`, `stoch`, `hidden`, `embed`, `action_dim`, every `obs_shape` entry >= 1, `probe_dim`
    >= 0, `image_bits` in 1..8); `min_std`, `obs_std`, `reward_std`, `probe_std` finite and > 0;
    `free_nats`, `kl_scale`, `reward_scale` finite and >= 0; the action bounds both given (or
    both empty: [-1, 1]), not NaN (+-inf allowed: an unbounded action space), with low <= high; `obs_names` / `probe_names` slices inside
    the observation / probe state, with names that do not clash.

    Raises:
        ValueError (from `validate`): `RSSMConfig.<field> must be ...; got ...`, naming the field.
    """

    obs_shape: tuple[int, ...] = ()
    action_dim: int = 0
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    deter: int = 200
    stoch: int = 30
    hidden: int = 200
    embed: int = 200
    min_std: float = 0.1
    obs_std: float | None = None
    reward_std: float = 1.0
    free_nats: float = 3.0
    kl_scale: float = 1.0
    reward_scale: float = 1.0
    image_bits: int = 5
    obs_names: tuple[tuple[str, int, int], ...] = field(default_factory=tuple)
    probe_dim: int = 0
    probe_names: tuple[tuple[str, int, int], ...] = field(default_factory=tuple)
    probe_std: float = 0.1
    probe_detach: bool = True

    def validate(self) -> None:
        """Check that every field has a usable value, the environment-dependent ones filled.

        Raises:
            ValueError: `RSSMConfig.<field> must be ...; got ...`, naming the offending field
                (wrong types and NaN/inf included).
        """
        def size(name: str, value, least: int) -> None:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"RSSMConfig.{name} must be an int >= {least}; got {value!r}")

        def real(name: str, value, *, positive: bool) -> None:
            ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) \
                and (value > 0 if positive else value >= 0)
            if not ok:
                raise ValueError(f"RSSMConfig.{name} must be a finite number {'> 0' if positive else '>= 0'}; "
                                 f"got {value!r}")

        shape = self.obs_shape
        if not isinstance(shape, (tuple, list)) or len(shape) not in (1, 3):
            raise ValueError(f"RSSMConfig.obs_shape must be (D,) or (3, 64, 64); got {shape!r}")
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
                raise ValueError(f"RSSMConfig.obs_shape must hold ints >= 1, (D,) or (3, 64, 64); got {shape!r}")
        if len(shape) == 3 and tuple(shape) != (3, 64, 64):
            raise ValueError(f"RSSMConfig.obs_shape: image observations must be (3, 64, 64); got {shape!r}")
        size("action_dim", self.action_dim, 1)
        for name in ("deter", "stoch", "hidden", "embed"):
            size(name, getattr(self, name), 1)
        size("probe_dim", self.probe_dim, 0)
        if isinstance(self.image_bits, bool) or not isinstance(self.image_bits, numbers.Integral) \
                or not 1 <= self.image_bits <= 8:
            raise ValueError(f"RSSMConfig.image_bits must be an int in 1..8; got {self.image_bits!r}")
        for name in ("min_std", "reward_std", "probe_std"):
            real(name, getattr(self, name), positive=True)
        if self.obs_std is not None:
            real("obs_std", self.obs_std, positive=True)
        for name in ("free_nats", "kl_scale", "reward_scale"):
            real(name, getattr(self, name), positive=False)
        low, high = self.action_low, self.action_high
        if bool(low) != bool(high):
            given, missing = ("action_low", "action_high") if low else ("action_high", "action_low")
            raise ValueError(f"RSSMConfig.{missing} must be given with {given} (or leave both empty for [-1, 1]); "
                             f"got action_low={tuple(low)!r}, action_high={tuple(high)!r}")
        for name, bound in (("action_low", low), ("action_high", high)):
            if bound and len(bound) != self.action_dim:
                raise ValueError(f"RSSMConfig.{name} must have action_dim = {self.action_dim} entries; "
                                 f"got {len(bound)}: {tuple(bound)!r}")
            for x in bound:  # +-inf is allowed (an unbounded action space); planners that need a box say so
                if isinstance(x, bool) or not isinstance(x, numbers.Real) or math.isnan(x):
                    raise ValueError(f"RSSMConfig.{name} must hold numbers (+-inf allowed), not NaN; got {tuple(bound)!r}")
        if low and any(lo > hi for lo, hi in zip(low, high)):
            raise ValueError(f"RSSMConfig.action_low must be <= action_high; got {tuple(low)!r} and {tuple(high)!r}")
        if not isinstance(self.probe_detach, bool):
            raise ValueError(f"RSSMConfig.probe_detach must be a bool; got {self.probe_detach!r}")

        def slices(field_name: str, entries, width: int, what: str, reserved: set[str]) -> set[str]:
            seen: set[str] = set()
            for entry in entries:
                ok = isinstance(entry, (tuple, list)) and len(entry) == 3 and isinstance(entry[0], str) \
                    and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in entry[1:])
                if not ok:
                    raise ValueError(f"RSSMConfig.{field_name} entries must be (name, start, stop) triples of "
                                     f"str, int, int; got {entry!r}")
                name, start, stop = entry
                if name in reserved or name in seen:
                    why = "is reserved" if name in reserved else "appears twice"
                    raise ValueError(f"RSSMConfig.{field_name}: the name {name!r} {why} "
                                     f"(reserved: {sorted(reserved)}); choose another name")
                seen.add(name)
                if not 0 <= start < stop <= width:
                    raise ValueError(
                        f"RSSMConfig.{field_name}: slice {name!r} [{start}, {stop}) is outside the {what} "
                        f"(need 0 <= start < stop <= {width})"
                    )
            return seen

        if self.is_image:
            if self.obs_names:
                raise ValueError("RSSMConfig.obs_names must be empty for image observations (name the probe "
                                 f"state with probe_names instead); got {self.obs_names!r}")
            obs_named: set[str] = set()
        else:
            reserved = {"obs"} | ({"state"} if self.probe_dim else set())
            obs_named = slices("obs_names", self.obs_names, shape[0], f"observation of obs_shape {tuple(shape)}",
                               reserved)
        clash = {e[0] for e in self.probe_names if isinstance(e, (tuple, list)) and e} \
            & (obs_named | {"obs", "image", "state"})
        if clash:
            raise ValueError(f"RSSMConfig.probe_names: {sorted(clash)} already name decoded observation entries")
        slices("probe_names", self.probe_names, self.probe_dim, f"probe state of probe_dim {self.probe_dim}", set())

    @property
    def observation_std(self) -> float:
        """The decoder's std in use: `obs_std`, or 1.0 for images / 0.1 for vectors when `None`."""
        if self.obs_std is not None:
            return self.obs_std
        return 1.0 if self.is_image else 0.1

    @property
    def is_image(self) -> bool:
        """True when observations are images."""
        return len(self.obs_shape) == 3

    def to_dict(self) -> dict:
        """Plain-Python form, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RSSMConfig":
        """Inverse of `to_dict` (lists become tuples again)."""
        d = dict(d)
        d["obs_shape"] = tuple(d["obs_shape"])
        d["action_low"] = tuple(d.get("action_low", ()))
        d["action_high"] = tuple(d.get("action_high", ()))
        d["obs_names"] = tuple(tuple(x) for x in d.get("obs_names", ()))
        d["probe_names"] = tuple(tuple(x) for x in d.get("probe_names", ()))
        return cls(**d)


@dataclass(frozen=True)
class ELBOTerms:
    """The terms of one ELBO evaluation (all scalars, averaged over batch and time).

    Attributes:
        loss: the minimised objective: reconstruction + reward NLL + kl_scale * max(KL, free nats).
        reconstruction: observation negative log-likelihood (Gaussian with std `observation_std`, constants dropped).
        reward: reward negative log-likelihood (Gaussian with std `reward_std`, constants dropped).
        kl: KL(posterior || prior) in nats per step, before free nats.
        posterior: `[B, T]` flattened to `[B*T]` rows: the filtered beliefs (detached).
        probe: the probe heads' negative log-likelihood of the env state (Gaussian with std
            `probe_std`, constants dropped), or None for a model without probes.
    """

    loss: Tensor
    reconstruction: Tensor
    reward: Tensor
    kl: Tensor
    posterior: LatentState
    probe: Tensor | None = None

    def scalars(self) -> dict[str, float]:
        """The loss terms as floats, for logging."""
        out = {
            "loss": float(self.loss.detach()), "reconstruction": float(self.reconstruction),
            "reward_nll": float(self.reward), "kl": float(self.kl),
        }
        if self.probe is not None:
            out["probe_nll"] = float(self.probe)
        return out


class _ImageDecoding(Mapping):
    """What an image model's `decode` returns: the probes' named quantities at once, and the
    `"image"` only when it is looked up (the conv decoder is costly, and planning with a known
    reward over probe quantities never needs it)."""

    def __init__(self, model: "RSSMWorldModel", state: LatentState, probed: dict[str, Tensor]) -> None:
        self._model, self._state, self._items = model, state, dict(probed)

    def __getitem__(self, key: str) -> Tensor:
        if key == "image" and "image" not in self._items:
            self._items["image"] = self._model.decoder(self._state.features())
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        yield "image"
        yield from (k for k in self._items if k != "image")

    def __len__(self) -> int:
        return len(self._items) + ("image" not in self._items)


class RSSMWorldModel(nn.Module, WorldModelBase):
    """PlaNet's RSSM with its encoder, observation decoder and reward head; a `WorldModel`.

    Shapes: B is the batch of beliefs, A the action dimension, D = `deter`, S = `stoch`.
    `rollout` (H prior steps with the visited beliefs stacked) is `WorldModelBase`'s.
    Observations are `[B, D_obs]` float vectors or `[B, 3, 64, 64]` uint8 images.

    Args:
        config: `RSSMConfig`.

    Source: Hafner et al. 2019 (PlaNet), Appendix A; the ELBO with free nats of their Eq. (3).
    """

    manual_bptt: bool = True
    """Train through `PosteriorFilter`'s hand-written backward through time (the default: the same
    gradients to float rounding; on the 2-core CPU 1.17 times the demo's updates per second on two
    threads, 1.02-1.03 times on one thread or at PlaNet's size, `benchmarks/train_speed.py`); False
    records the posterior recursion step by step for autograd (what `torch.compile` traces)."""

    def __init__(self, config: RSSMConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.action_dim = c.action_dim
        low = c.action_low or (-1.0,) * c.action_dim
        high = c.action_high or (1.0,) * c.action_dim
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32), persistent=False)
        # Transition (prior): z_{t-1}, a_{t-1} -> GRU -> h_t -> p(z_t | h_t)
        self.pre_gru = nn.Linear(c.stoch + c.action_dim, c.hidden)
        self.gru = nn.GRUCell(c.hidden, c.deter)
        self.prior_hidden = nn.Linear(c.deter, c.hidden)
        self.prior_out = nn.Linear(c.hidden, 2 * c.stoch)
        # Posterior: h_t, embed(o_t) -> q(z_t | h_t, o_t)
        if c.is_image:
            self.encoder: nn.Module = ConvEncoder()
            embed = self.encoder.out_dim
            self.decoder: nn.Module = ConvDecoder(c.deter + c.stoch)
        else:
            self.encoder = MLP(c.obs_shape[0], c.embed, c.hidden, layers=2)
            embed = c.embed
            self.decoder = MLP(c.deter + c.stoch, c.obs_shape[0], c.hidden, layers=2)
        self.post_hidden = nn.Linear(c.deter + embed, c.hidden)
        self.post_out = nn.Linear(c.hidden, 2 * c.stoch)
        self.reward_head = MLP(c.deter + c.stoch, 1, c.hidden, layers=2)
        self.probe_head = MLP(c.deter + c.stoch, c.probe_dim, c.hidden, layers=2) if c.probe_dim else None

    # ------------------------------------------------------------------ helpers
    @property
    def feature_size(self) -> int:
        """F = D + S, the size of `LatentState.features()`."""
        return self.config.deter + self.config.stoch

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.pre_gru.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (float32 as built, float64 after `.double()`): beliefs,
        actions and the encoder's input are in it."""
        return self.pre_gru.weight.dtype

    def _gaussian(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = out.chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.config.min_std

    def _check_step(self, state: LatentState, action: Tensor, fn: str) -> None:
        c = self.config
        check_step(f"RSSMWorldModel.{fn}", state, action, deter=c.deter, stoch=c.stoch, action_dim=self.action_dim,
                   dtype=self.pre_gru.weight.dtype, device=self.device)

    def _check_obs(self, obs: Tensor, batch: int, fn: str) -> None:
        if not isinstance(obs, Tensor):
            raise TypeError(f"RSSMWorldModel.{fn}: obs must be a torch.Tensor [B, *obs_shape] (convert with "
                            f"torch.as_tensor); got {type(obs).__name__}")
        want = (batch, *self.config.obs_shape)
        if tuple(obs.shape) != want:
            raise ValueError(f"RSSMWorldModel.{fn}: observation must be {list(want)}; got {list(obs.shape)}")
        if self.config.is_image:
            if obs.dtype != torch.uint8:
                raise ValueError(f"RSSMWorldModel.{fn}: image observations must be uint8; got {obs.dtype}")
        elif not torch.isfinite(obs).all():
            raise ValueError(f"RSSMWorldModel.{fn}: observation contains NaN or inf")

    def embed(self, obs: Tensor, *, noise: torch.Generator | bool | None = None) -> Tensor:
        """Encode observations `[N, *obs_shape] -> [N, E]` (images are quantised to `image_bits` first;
        the encoder's input is cast to the parameters' dtype)."""
        if self.config.is_image:
            return self.encoder(preprocess_image(obs, self.config.image_bits, noise=noise).to(self.dtype))
        return self.encoder(obs.to(self.dtype))

    def _transition(self, state: LatentState, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.elu(self.pre_gru(torch.cat([state.stoch, action], dim=-1)))
        deter = self.gru(x, state.deter)
        mean, std = self._gaussian(self.prior_out(F.elu(self.prior_hidden(deter))))
        return deter, mean, std

    def _posterior(self, deter: Tensor, embed: Tensor) -> tuple[Tensor, Tensor]:
        return self._gaussian(self.post_out(F.elu(self.post_hidden(torch.cat([deter, embed], dim=-1)))))

    @staticmethod
    def _sample(mean: Tensor, std: Tensor, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * eps

    def _reset(self, state: LatentState, action: Tensor, is_first: Tensor) -> tuple[LatentState, Tensor]:
        # `where`, not a product with 0: a reset row's old belief or (ignored) action may be NaN
        first = is_first[:, None]
        zero = state.deter.new_zeros(())
        return (LatentState(torch.where(first, zero, state.deter), torch.where(first, zero, state.stoch)),
                torch.where(first, zero, action))

    def _check_is_first(self, is_first, batch: int, fn: str) -> Tensor:
        """`is_first` as a bool tensor `[batch]` on the model's device, or a named error."""
        where = f"RSSMWorldModel.{fn}"
        if not isinstance(is_first, Tensor):
            if isinstance(is_first, (bool, int, float, str, bytes)) or is_first is None:
                raise TypeError(f"{where}: is_first must be a bool tensor [B={batch}], one flag per row; got "
                                f"{type(is_first).__name__} {is_first!r}")
            try:
                is_first = torch.as_tensor(is_first)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"{where}: is_first must be a bool tensor [B={batch}]; got {type(is_first).__name__} "
                                f"({e})") from None
        if is_first.numel() != batch:
            raise ValueError(f"{where}: is_first must be [B={batch}] bool, one flag per row; got "
                             f"{list(is_first.shape)} {str(is_first.dtype).replace('torch.', '')}")
        is_first = is_first.reshape(batch)  # [B], [B, 1], or a 0-dim flag for B = 1
        if is_first.dtype != torch.bool:
            if is_first.is_complex() or not bool(((is_first == 0) | (is_first == 1)).all()):
                raise ValueError(f"{where}: is_first must be bool (or values 0/1) [B={batch}]; got "
                                 f"{str(is_first.dtype).replace('torch.', '')} values {is_first.tolist()[:8]}")
            is_first = is_first.bool()
        return is_first.to(self.device)

    # ------------------------------------------------------------------ WorldModel protocol
    def initial(self, batch: int) -> LatentState:
        """The belief before any observation: zeros in the parameters' dtype and device,
        `deter [batch, D]` and `stoch [batch, S]`.

        Raises:
            TypeError: `batch` is not an int (NumPy ints are fine; bools and floats are not).
            ValueError: `batch < 0`.
        """
        batch = check_count("RSSMWorldModel.initial", "batch", batch)
        kw = dict(device=self.device, dtype=self.dtype)
        return LatentState(torch.zeros(batch, self.config.deter, **kw), torch.zeros(batch, self.config.stoch, **kw))

    def observe(
        self, state: LatentState, action: Tensor, obs: Tensor, is_first: Tensor,
        *, generator: torch.Generator | None = None, sample: bool = True,
    ) -> LatentState:
        """Posterior (filter) step: belief after `action [B, A]` from `state` and then seeing `obs`.

        Args:
            state: previous belief, `[B]` rows.
            action: `[B, A]`, the action taken since `state` (ignored where `is_first`).
            obs: `[B, D_obs]` float (cast to the model's dtype) or `[B, 3, 64, 64]` uint8, a tensor.
            is_first: `[B]` bool (integer 0/1 and NumPy arrays are accepted); rows that start an
                episode are reset to `initial` first, and their action (even NaN) is ignored.
            generator: randomness of the posterior sample.
            sample: if False, use the posterior mean instead of a sample.

        Raises:
            TypeError: `state` not a `LatentState`, `action` or `obs` not a tensor, or `is_first`
                not a tensor / array of flags.
            ValueError: a wrong action or observation shape (or state/action dtype or device, see
                `check_step`), a non-uint8 image, NaN/inf in a vector observation or in the action
                of a row that is not first, or an `is_first` that is not `[B]` or holds values
                other than true/false (0/1).
        """
        b = state.batch if isinstance(state, LatentState) else None
        self._check_step(state, action, "observe")
        self._check_obs(obs, b, "observe")
        is_first = self._check_is_first(is_first, b, "observe")
        if not bool((torch.isfinite(action).all(-1) | is_first).all()):
            raise ValueError("RSSMWorldModel.observe: action contains NaN or inf on a row whose is_first is false")
        state, action = self._reset(state, action, is_first)
        deter, _, _ = self._transition(state, action)
        mean, std = self._posterior(deter, self.embed(obs))
        stoch = self._sample(mean, std, generator) if sample else mean
        return LatentState(deter, stoch)

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> LatentState:
        """Prior (open-loop) step: `state [B]`, `action [B, A]` -> next belief with z sampled from the prior
        (reparameterised, so gradients flow to the action), or the prior mean if `sample=False`.

        Raises:
            TypeError / ValueError: a state or action of another size, dtype or device than the
                model's (`check_step`; metadata only, so it costs microseconds and no host sync).
        """
        self._check_step(state, action, "imagine_step")
        deter, mean, std = self._transition(state, action)
        return LatentState(deter, self._sample(mean, std, generator) if sample else mean)

    def reward(self, state: LatentState) -> Tensor:
        """Predicted reward of arriving in `state`: `[B]`."""
        return self.reward_head(state.features()).squeeze(-1)

    def probe(self, state: LatentState) -> Tensor:
        """The probe heads' estimate of the environment's physical state: `[B, probe_dim]`.

        Raises:
            ValueError: the model has no probes (`config.probe_dim == 0`).
        """
        if self.probe_head is None:
            raise ValueError("RSSMWorldModel.probe: this model has no probe heads (RSSMConfig.probe_dim = 0)")
        return self.probe_head(state.features())

    def fit_probes(
        self, features: Tensor, targets: Tensor, *, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> list[float]:
        """Fit the probe heads alone on fixed latent features (the world model is not touched):
        for a pixel model trained without probes, or to refine them after training.

        Args:
            features: `[N, D + S]` latent features of beliefs (e.g. posterior beliefs along
                stored episodes, `LatentState.features()`), detached.
            targets: `[N, probe_dim]` the env's state at those beliefs.
            steps: Adam steps on minibatches of `batch_size` rows drawn with `generator`.
            lr: Adam learning rate.

        Returns:
            the probe loss (as in `elbo`) of every step.

        Raises:
            ValueError: no probe heads, mismatched shapes, no rows (N = 0), NaN/inf targets,
                `steps` not an int >= 0, `batch_size` not an int >= 1, or `lr` not finite and > 0.
        """
        if self.probe_head is None:
            raise ValueError("RSSMWorldModel.fit_probes: this model has no probe heads (RSSMConfig.probe_dim = 0)")
        for name, value, least in (("steps", steps, 0), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"RSSMWorldModel.fit_probes: {name} must be an int >= {least}; got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"RSSMWorldModel.fit_probes: lr must be a finite number > 0; got {lr!r}")
        f, p = self.config.deter + self.config.stoch, self.config.probe_dim
        if features.dim() != 2 or features.shape[1] != f or targets.shape != (features.shape[0], p):
            raise ValueError(
                f"RSSMWorldModel.fit_probes: expected features [N, {f}] and targets [N, {p}]; got "
                f"{list(features.shape)} and {list(targets.shape)}"
            )
        if features.shape[0] == 0 and steps > 0:
            raise ValueError("RSSMWorldModel.fit_probes: features and targets have no rows (N = 0)")
        if not torch.isfinite(targets).all():
            raise ValueError("RSSMWorldModel.fit_probes: targets contain NaN or inf")
        features, targets = features.detach().to(self.device, self.dtype), targets.to(self.device, self.dtype)
        opt = torch.optim.Adam(self.probe_head.parameters(), lr=lr)
        dev = generator.device if generator is not None else torch.device("cpu")
        losses = []
        for _ in range(steps):
            idx = torch.randint(0, features.shape[0], (batch_size,), generator=generator, device=dev).to(self.device)
            loss = 0.5 * (((self.probe_head(features[idx]) - targets[idx]) / self.config.probe_std) ** 2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    def decode(self, state: LatentState) -> Mapping[str, Tensor]:
        """Decoded observation means.

        Returns:
            For vector models, a dict: `"obs"` `[B, D_obs]` and one entry per named slice of
            `config.obs_names` (e.g. `"position"` `[B, 3]`, `"cart_x"` `[B, 1]`).
            For image models, a mapping: `"image"` `[B, 3, 64, 64]` as floats in about
            [-0.5, 0.5] (computed only when looked up).
            With probe heads (either kind): `"state"` `[B, probe_dim]` plus one entry per slice
            of `config.probe_names` (`"cart_x"` `[B, 1]`).
        """
        if self.config.is_image:
            probed: dict[str, Tensor] = {}
            if self.probe_head is not None:
                est = self.probe(state)
                probed["state"] = est
                for name, start, stop in self.config.probe_names:
                    probed[name] = est[:, start:stop]
            return _ImageDecoding(self, state, probed)
        out = self.decoder(state.features())
        named = {"obs": out}
        for name, start, stop in self.config.obs_names:
            named[name] = out[:, start:stop]
        if self.probe_head is not None:
            est = self.probe(state)
            named["state"] = est
            for name, start, stop in self.config.probe_names:
                named[name] = est[:, start:stop]
        return named

    def decode_image_uint8(self, state: LatentState) -> Tensor:
        """For image models: decoded frames as `uint8 [B, 3, 64, 64]`.

        Raises:
            ValueError: the model decodes state vectors, not images.
        """
        if not self.config.is_image:
            raise ValueError("RSSMWorldModel.decode_image_uint8: this model decodes state vectors "
                             f"(obs_shape {self.config.obs_shape}), not images; use decode(state)['obs']")
        return postprocess_image(self.decode(state)["image"])

    # ------------------------------------------------------------------ training
    def _filter(
        self, embed: Tensor, action: Tensor, is_first: Tensor, eps: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The posterior recursion of `elbo` over `[B, T]` steps: `(deter [B*T, D], stoch [B*T, S],
        posterior mean [B*T, S], posterior std [B*T, S])`, row `b * T + t`. Only what feeds the
        next step is inside the loop (pre-GRU, GRU, posterior, sample); the action's and the
        embedding's parts of the linear layers are computed for all steps at once. `eps [T, B, S]`
        is the samples' standard-normal noise, drawn by the caller (`elbo_noise`), so that this is
        a pure function of tensors (`torch.compile` traces it without a graph break).

        With `manual_bptt` (and outside `torch.compile`) the recursion is one autograd node,
        `PosteriorFilter`, whose backward through time is written by hand; otherwise the loop
        below records its steps for autograd. Both give the same numbers to float rounding."""
        c = self.config
        keep = (~is_first.bool()).to(action.dtype)[..., None]  # [B, T, 1]: 0 where an episode starts
        w_s, w_a = self.pre_gru.weight[:, : c.stoch], self.pre_gru.weight[:, c.stoch:]
        action_part = F.linear(action * keep, w_a, self.pre_gru.bias)  # [B, T, hidden]
        w_d, w_e = self.post_hidden.weight[:, : c.deter], self.post_hidden.weight[:, c.deter:]
        embed_part = F.linear(embed, w_e, self.post_hidden.bias)  # [B, T, hidden]
        if self.manual_bptt and not torch.compiler.is_compiling():
            outs = posterior_filter(action_part, embed_part, keep, eps, w_s, self.gru, w_d, self.post_out, c.min_std)
            return tuple(x.flatten(0, 1) for x in outs)
        b = action.shape[0]
        deter = action.new_zeros(b, c.deter)  # the initial belief (`initial`), without a device query
        stoch = action.new_zeros(b, c.stoch)
        out: list[list[Tensor]] = [[], [], [], []]
        # unbind, not [:, i]: the backward of T slices would build T zero-filled [B, T, hidden] gradients
        for k, a_part, e_part, noise in zip(keep.unbind(1), action_part.unbind(1), embed_part.unbind(1), eps.unbind(0)):
            x = F.elu(a_part + F.linear(stoch * k, w_s))
            deter = self.gru(x, deter * k)
            q_mean, q_std = self._gaussian(self.post_out(F.elu(e_part + F.linear(deter, w_d))))
            stoch = q_mean + q_std * noise
            for seq, x in zip(out, (deter, stoch, q_mean, q_std)):
                seq.append(x)
        return tuple(torch.stack(seq, 1).flatten(0, 1) for seq in out)

    def elbo_noise(self, obs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The randomness of one ELBO evaluation, drawn from `generator` in the order `elbo` uses it.

        Args:
            obs: `[B, T, *obs_shape]` observations.
            generator: the posterior samples' and image dequantisation noise's randomness (torch's
                global generator when None).

        Returns:
            `(encoder_input [B*T, *obs_shape] float, eps [T, B, S])`: the encoder's input in the
            parameters' dtype (images preprocessed with dequantisation noise, `preprocess_image`;
            vectors cast) and the
            posterior samples' standard-normal noise, drawn step by step (the numbers `elbo` drew
            before this split, for the same generator).
        """
        c = self.config
        b, t = obs.shape[:2]
        flat = obs.flatten(0, 1)
        enc_in = preprocess_image(flat, c.image_bits, noise=generator if generator is not None else True) \
            if c.is_image else flat
        enc_in = enc_in.to(self.dtype)
        eps = torch.stack([torch.randn(b, c.stoch, generator=generator, device=obs.device, dtype=enc_in.dtype)
                           for _ in range(t)])
        return enc_in, eps

    def elbo_core(
        self, encoder_input: Tensor, target: Tensor, action: Tensor, reward: Tensor, is_first: Tensor, eps: Tensor,
        probe_target: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        """The ELBO as a pure function of tensors (no randomness, no host reads): what `elbo`
        computes after drawing its noise, and what `torch.compile` compiles for
        `TrainConfig.compile_update`.

        Args:
            encoder_input: `[B*T, *obs_shape]` float, from `elbo_noise`.
            target: `[B*T, *obs_shape]` float, the reconstruction target (images preprocessed
                without noise; vectors as float).
            action: `[B, T, A]`; reward: `[B, T]`; is_first: `[B, T]` bool (as `elbo`'s).
            eps: `[T, B, S]` the posterior samples' noise, from `elbo_noise`.
            probe_target: `[B*T, probe_dim]` float for a model with probe heads, else None.

        Returns:
            `(loss, reconstruction, reward_nll, kl, deter [B*T, D], stoch [B*T, S], probe_nll)`,
            scalars except the posterior beliefs; `probe_nll` is a zero scalar without probes. Not
            detached.
        """
        c = self.config
        b, t = action.shape[:2]
        embed = self.encoder(encoder_input)
        deters, stochs, q_mean, q_std = self._filter(embed.unflatten(0, (b, t)), action, is_first, eps)
        # the prior p(z_t | h_t) only enters the KL, not the recursion: one batched pass after the loop
        p_mean, p_std = self._gaussian(self.prior_out(F.elu(self.prior_hidden(deters))))
        kl = (torch.log(p_std / q_std) + (q_std**2 + (q_mean - p_mean) ** 2) / (2 * p_std**2) - 0.5).sum(-1)
        feats = torch.cat([deters, stochs], dim=-1)
        recon_mean = self.decoder(feats)
        recon = 0.5 * (((recon_mean - target) / c.observation_std) ** 2).flatten(1).sum(-1).mean()
        rew = 0.5 * (((self.reward_head(feats).squeeze(-1) - reward.flatten().to(feats.dtype)) / c.reward_std) ** 2).mean()
        kl = kl.mean()
        loss = recon + c.reward_scale * rew + c.kl_scale * torch.clamp(kl, min=c.free_nats)
        probe = loss.new_zeros(())
        if self.probe_head is not None and probe_target is not None:
            est = self.probe_head(feats.detach() if c.probe_detach else feats)
            probe = 0.5 * (((est - probe_target) / c.probe_std) ** 2).sum(-1).mean()
            loss = loss + probe
        return loss, recon, rew, kl, deters, stochs, probe

    def elbo(
        self, obs: Tensor, action: Tensor, reward: Tensor, is_first: Tensor,
        *, generator: torch.Generator | None = None, state: Tensor | None = None, core=None,
    ) -> ELBOTerms:
        """PlaNet's ELBO on a batch of sequences (reconstruction, reward, KL with free nats), plus
        the probe heads' auxiliary loss when the model has probes.

        Args:
            obs: `[B, T, *obs_shape]` observations o_t.
            action: `[B, T, A]`; `action[:, t]` is the action that led to `obs[:, t]`.
            reward: `[B, T]`; `reward[:, t]` is the reward received on arriving at `obs[:, t]`.
            is_first: `[B, T]` bool, true at the first step of an episode.
            generator: randomness of the posterior samples and image dequantisation noise.
            state: `[B, T, probe_dim]` the environment's physical state at each step, the probe
                targets (required when `config.probe_dim > 0`, ignored otherwise).
            core: the function that computes the terms once the noise is drawn: `self.elbo_core`
                (None, the default) or a compiled version of it, `torch.compile(model.elbo_core)`
                (`Trainer` passes one when `TrainConfig.compile_update` is set).

        Returns:
            `ELBOTerms`, with `loss` to minimise.

        Raises:
            TypeError: an input that is not a tensor.
            ValueError: if the shapes disagree, B or T is 0, obs (vectors), action or reward hold
                NaN/inf, or probe targets are missing or contain NaN.

        Dtypes: vector observations, actions, rewards and probe targets are cast to the
        parameters' dtype (a `.double()` model computes the ELBO in float64).
        """
        c = self.config
        for name, x in (("obs", obs), ("action", action), ("reward", reward), ("is_first", is_first)):
            if not isinstance(x, Tensor):
                raise TypeError(f"RSSMWorldModel.elbo: {name} must be a torch.Tensor; got {type(x).__name__}")
        if action.dim() != 3 or action.shape[2] != c.action_dim or tuple(obs.shape) != (*action.shape[:2], *c.obs_shape) \
                or reward.shape != action.shape[:2] or is_first.shape != action.shape[:2]:
            raise ValueError(
                "RSSMWorldModel.elbo: expected obs [B, T, *obs_shape], action [B, T, A], reward [B, T], "
                f"is_first [B, T]; got {list(obs.shape)}, {list(action.shape)}, {list(reward.shape)}, "
                f"{list(is_first.shape)}"
            )
        b, t = action.shape[:2]
        if b == 0 or t == 0:
            raise ValueError(f"RSSMWorldModel.elbo: the batch B and the sequence length T must be >= 1; "
                             f"got B = {b}, T = {t} (action {list(action.shape)})")
        action, reward = action.to(self.dtype), reward.to(self.dtype)
        checks = [("action", action), ("reward", reward)] + ([] if c.is_image else [("obs", obs)])
        finite = torch.stack([torch.isfinite(x).all() for _, x in checks])
        if not bool(finite.all()):  # one host read for all three
            bad = [name for (name, _), ok in zip(checks, finite.tolist()) if not ok]
            raise ValueError(f"RSSMWorldModel.elbo: {', '.join(bad)} contain{'s' if len(bad) == 1 else ''} NaN or inf")
        probe_target = None
        if self.probe_head is not None:
            if state is None or tuple(state.shape) != (b, t, c.probe_dim):
                got = "none" if state is None else list(state.shape)
                raise ValueError(
                    f"RSSMWorldModel.elbo: a model with probe heads needs state [B, T, probe_dim={c.probe_dim}] "
                    f"targets (the env's info['state']); got {got}"
                )
            probe_target = state.flatten(0, 1).to(self.dtype)
            if not torch.isfinite(probe_target).all():
                raise ValueError("RSSMWorldModel.elbo: probe targets (state) contain NaN or inf")
        enc_in, eps = self.elbo_noise(obs, generator)
        target = (preprocess_image(obs.flatten(0, 1), c.image_bits) if c.is_image else obs.flatten(0, 1)).to(self.dtype)
        loss, recon, rew, kl, deters, stochs, probe = (core or self.elbo_core)(
            enc_in, target, action, reward, is_first, eps, probe_target)
        post = LatentState(deters, stochs)
        probe = probe.detach() if self.probe_head is not None else None
        return ELBOTerms(loss, recon.detach(), rew.detach(), kl.detach(), post.detach(), probe)
