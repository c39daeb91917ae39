"""An ensemble of one-step predictors over a world model's latent features, evaluated in one
batched call; the disagreement of its members is Plan2Explore's intrinsic reward.

Sekar, Rybkin, Daniilidis, Abbeel, Hafner, Pathak 2020, "Planning to Explore via Self-Supervised
World Models" (Section 3): K networks, each trained to predict the next step's observation
embedding from the current latent state and action; where they disagree (the variance of their
predictions across members is high) the model has seen little data, and a planner that maximises
that variance in imagination collects the data the model lacks.

The K members share one architecture (`networks.MLP`), so their parameters are stored stacked,
`[K, ...]` per weight (`torch.func.stack_module_state`), and the forward pass is one
`torch.func.vmap` over `torch.func.functional_call`: no Python loop over members.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .networks import MLP

__all__ = ["EnsembleConfig", "PredictorEnsemble"]

Condition = Literal["transition", "arrival"]
Target = Literal["embed", "stoch"]


@dataclass(frozen=True)
class EnsembleConfig:
    """The predictor ensemble of Plan2Explore.

    Attributes:
        members: K, the number of predictors (Sekar et al. 2020: 5).
        hidden: units of every hidden layer of each member.
        layers: hidden layers of each member.
        lr: Adam learning rate of the ensemble (its own optimiser; the world model is not touched).
        condition: what a member reads. `"transition"` (the paper's): the features of the latent
            state s_t (`[deter, stoch]`) and the action a_t, predicting the target at t+1; a reward
            term of `stage="transition"`. `"arrival"`: the deterministic state h_{t+1} of the
            state the action arrives in, which the RSSM computes from (h_t, z_t, a_t) before seeing
            o_{t+1}; an arrival term, so planners that take arrival terms only (iLQR) can use it.
        target: what is predicted at t+1: `"embed"`, the encoder's embedding of o_{t+1} (the
            paper's), or `"stoch"`, the posterior stochastic state z_{t+1}.

    Raises:
        ValueError: `EnsembleConfig.<field> must be ...; got ...`: `members` not an int >= 2,
            `hidden` / `layers` not ints >= 1, `lr` not finite and > 0, or an unknown
            `condition` / `target`.
    """

    members: int = 5
    hidden: int = 200
    layers: int = 2
    lr: float = 1e-3
    condition: Condition = "transition"
    target: Target = "embed"

    def __post_init__(self) -> None:
        for name in ("members", "hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "members" else 1):
                least = 2 if name == "members" else 1
                raise ValueError(f"EnsembleConfig.{name} must be an int >= {least}; got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"EnsembleConfig.lr must be a finite number > 0; got {self.lr!r}")
        if self.condition not in ("transition", "arrival"):
            raise ValueError(f"EnsembleConfig.condition must be 'transition' or 'arrival'; got {self.condition!r}")
        if self.target not in ("embed", "stoch"):
            raise ValueError(f"EnsembleConfig.target must be 'embed' or 'stoch'; got {self.target!r}")

    def to_dict(self) -> dict:
        """Plain-Python form, for checkpoints."""
        return asdict(self)


class PredictorEnsemble(nn.Module):
    """K one-step predictors `[N, in_dim] -> [K, N, out_dim]` with stacked parameters.

    Args:
        config: `EnsembleConfig` (K, width, depth).
        in_dim: input features per row (e.g. `D + S + A` for `condition="transition"`).
        out_dim: predicted features per row (e.g. the embedding size).
        generator: seeds the members' initialisation (each member is initialised independently,
            as in the paper: the members differ by their initial weights only).

    Attributes:
        params: the stacked parameters, one `nn.Parameter` of shape `[K, ...]` per weight of
            `networks.MLP` (named with `__` for `.`), trained by an ordinary optimiser.

    Raises:
        TypeError: `config` is not an `EnsembleConfig`.
        ValueError: `in_dim` or `out_dim` not an int >= 1.

    Source: Sekar et al. 2020, Section 3 (the ensemble and its disagreement); the stacking is
    `torch.func`'s model-ensembling recipe.
    """

    def __init__(self, config: EnsembleConfig, in_dim: int, out_dim: int,
                 *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, EnsembleConfig):
            raise TypeError(f"PredictorEnsemble: config must be an EnsembleConfig; got {type(config).__name__}")
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"PredictorEnsemble: {name} must be an int >= 1; got {value!r}")
        self.config = config
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            members = [MLP(in_dim, out_dim, config.hidden, config.layers) for _ in range(config.members)]
        stacked, _ = stack_module_state(members)
        self._names = list(stacked)
        self.params = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(v.detach().clone()) for n, v in stacked.items()})
        # the architecture without weights: functional_call fills it with one member's parameters
        self._base = [copy.deepcopy(members[0]).to("meta")]  # a list: not a registered submodule

    @property
    def members(self) -> int:
        """K, the number of members."""
        return self.config.members

    def _stacked(self) -> dict[str, Tensor]:
        return {n: self.params[n.replace(".", "__")] for n in self._names}

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"PredictorEnsemble: inputs must be a torch.Tensor [N, {self.in_dim}]; got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"PredictorEnsemble: inputs must be [N, {self.in_dim}]; got {list(x.shape)}")
        want = next(iter(self.params.values())).dtype
        if x.dtype != want:
            raise ValueError(f"PredictorEnsemble: inputs must be {str(want).replace('torch.', '')} as the members' "
                             f"weights; got {str(x.dtype).replace('torch.', '')} (convert with .to({want}))")

    def forward(self, x: Tensor) -> Tensor:
        """All members' predictions in one vmapped call: `x [N, in_dim] -> [K, N, out_dim]`.

        Raises:
            TypeError: `x` is not a tensor.
            ValueError: `x` is not `[N, in_dim]` or not in the weights' dtype.
        """
        self._check(x)
        base = self._base[0]

        def one(params: dict[str, Tensor], inputs: Tensor) -> Tensor:
            return functional_call(base, params, (inputs,))

        return vmap(one, in_dims=(0, None))(self._stacked(), x)

    def forward_loop(self, x: Tensor) -> Tensor:
        """The same predictions with a Python loop over the K members (the reference that `forward`
        is tested and benchmarked against): `[N, in_dim] -> [K, N, out_dim]`.

        Raises:
            TypeError: `x` is not a tensor.
            ValueError: `x` is not `[N, in_dim]` or not in the weights' dtype.
        """
        self._check(x)
        stacked = self._stacked()
        return torch.stack([functional_call(self._base[0], {n: p[k] for n, p in stacked.items()}, (x,))
                            for k in range(self.members)])

    def disagreement(self, x: Tensor) -> Tensor:
        """Plan2Explore's intrinsic reward: the variance of the members' predictions across members
        (population variance, divisor K), averaged over the output dimensions: `[N, in_dim] -> [N]`.
        NaN or inf inputs give NaN for their rows, and inputs so large that the predictions
        overflow give inf (not checked: a check would synchronise with the device inside
        planners' loops; planners rank NaN/inf returns last and count them in `info["nonfinite"]`).
        `N = 0` gives an empty `[0]`.

        Raises:
            TypeError: `x` is not a tensor.
            ValueError: `x` is not `[N, in_dim]` or not in the weights' dtype.
        """
        return self(x).var(dim=0, unbiased=False).mean(dim=-1)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        """Training loss: each member's Gaussian negative log-likelihood of `target [N, out_dim]` with
        unit variance (`0.5 * squared error` summed over dims, constants dropped), averaged over
        rows and summed over members, so each member's gradient is its own loss's.

        Raises:
            TypeError: `x` or `target` is not a tensor.
            ValueError: `x` is not `[N, in_dim]` or `target` is not `[N, out_dim]`.
        """
        self._check(x)
        if not isinstance(target, Tensor):
            raise TypeError(f"PredictorEnsemble.loss: target must be a torch.Tensor [N, {self.out_dim}]; "
                            f"got {type(target).__name__}")
        if target.shape != (x.shape[0], self.out_dim):
            raise ValueError(f"PredictorEnsemble.loss: target must be [N={x.shape[0]}, {self.out_dim}]; "
                             f"got {list(target.shape)}")
        return 0.5 * ((self(x) - target.detach()) ** 2).sum(-1).mean(-1).sum()
