"""The shared gradient ascent (`planners.ascent`): exact optima of a one-step problem, the bounds,
the step count under a deadline, non-finite returns, and the settings' validation."""

import time

import pytest
import torch

from latentplan.planners import AscentConfig, GradientConfig, Objective, ascend
from latentplan.planners.ascent import optimizer_class
from latentplan.worldmodels import AnalyticModel


def _target_model(target: float = 0.3) -> AnalyticModel:
    """x' = u, reward -(x' - target)^2: the optimal action is `target` at every step."""
    return AnalyticModel(lambda x, u: u, lambda x: -((x - target) ** 2).sum(-1), 1, [-1.0], [1.0])


@pytest.mark.parametrize("squash", ["clip", "tanh"])
def test_ascent_finds_the_optimum_of_every_row_independently(squash):
    model = _target_model()
    obj = Objective(model)
    start = torch.tensor([[[-0.9], [0.9]], [[0.0], [0.5]], [[0.99], [-0.99]]])  # [N=3, H=2, A=1]
    out = ascend(obj, model.initial(3), start, iterations=300, lr=0.05, squash=squash)
    torch.testing.assert_close(out.actions, torch.full((3, 2, 1), 0.3), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.returns, torch.zeros(3), atol=1e-5, rtol=0)
    # every step a forward and a backward pass (counted as VJP_EVALS = 2 forward), then one last forward
    assert out.steps == 300 and out.model_evals == 3 * 2 * (300 * 3 + 1)
    assert int(out.nonfinite) == 0 and int(out.nonfinite_grads) == 0
    # the first step's gradient of the return w.r.t. a_0 is -2 (a_0 - 0.3), averaged over the rows
    assert abs(float(out.grad_first) - (2 * 1.2 + 2 * 0.3 + 2 * 0.69) / 3) < 1e-4


def test_ascent_stays_in_bounds_keeps_the_best_and_obeys_the_deadline():
    model = _target_model(target=5.0)  # the optimum lies past the upper bound 1
    obj = Objective(model)
    out = ascend(obj, model.initial(1), torch.zeros(1, 3, 1), **vars(AscentConfig(iterations=200, lr=0.1)))
    torch.testing.assert_close(out.actions, torch.ones(1, 3, 1))
    torch.testing.assert_close(out.returns, torch.tensor([-3 * 16.0]))
    past = time.perf_counter() - 1.0
    once = ascend(obj, model.initial(1), torch.zeros(1, 3, 1), iterations=200, lr=0.1, deadline=past)
    assert once.steps == 1 and once.model_evals == 1 * 3 * (1 * 3 + 1)  # forward + backward (2), last forward


def test_nonfinite_returns_rank_last_and_their_gradients_are_dropped():
    model = AnalyticModel(lambda x, u: u, lambda x: torch.where(x[:, 0] > 0.5, float("nan"), -x[:, 0] ** 2), 1, [-1.0], [1.0])
    out = ascend(Objective(model), model.initial(2), torch.tensor([[[0.9]], [[-0.4]]]), iterations=3, lr=0.1)
    assert int(out.nonfinite) == 4 and int(out.nonfinite_grads) == 3  # row 0 stays at 0.9: NaN in 4 evaluations
    assert out.returns[0] == float("-inf") and torch.isfinite(out.returns[1])


def test_ascent_settings_are_validated_and_the_gradient_planner_shares_them():
    assert optimizer_class("ADAM") is torch.optim.Adam and optimizer_class("sgd") is torch.optim.SGD
    for kwargs, message in [
        (dict(iterations=0), r"AscentConfig\.iterations must be an int >= 1; got 0"),
        (dict(lr=float("nan")), r"AscentConfig\.lr must be a positive number"),
        (dict(optimizer="LBFGS"), r"AscentConfig\.optimizer: 'LBFGS' is not a usable"),
    ]:
        with pytest.raises(ValueError, match=message):
            AscentConfig(**kwargs)
    cfg = GradientConfig(iterations=7, lr=0.2, optimizer="rmsprop", squash="clip", grad_clip=2.0)
    assert cfg.ascent == AscentConfig(iterations=7, lr=0.2, optimizer="rmsprop", squash="clip", grad_clip=2.0)
    with pytest.raises(ValueError, match=r"GradientConfig\.restarts must be an int >= 1; got 0"):
        GradientConfig(restarts=0)
