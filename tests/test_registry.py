"""The planner registry: names, specs with overrides, presets, budgets, trained parts by path, and one
resolution of a name for every command (the distillation teacher included)."""

import pytest
import torch

from latentplan import io as lp_io
from latentplan.distillation import DistillRunConfig, make_teacher
from latentplan.registry import (
    PRESETS, Budget, PlannerNotAvailable, PlannerSpec, available_planners, make_planner, mcts_factory,
    register_planner,
)
from test_compare import _counting_factory, point_model


def test_registry_names_overrides_and_errors():
    assert {"cem", "icem", "mppi", "cem_softmax", "gradient", "cem_gd", "ilqr", "mcts", "policy"} <= set(available_planners())
    spec = PlannerSpec.parse("icem:noise_beta=3,keep_elites=0.2,refit=mppi")
    assert spec.overrides == (("noise_beta", 3), ("keep_elites", 0.2), ("refit", "mppi")) and spec.label == spec.name + ":noise_beta=3,keep_elites=0.2,refit=mppi"
    model = point_model()
    with pytest.raises(ValueError, match="unknown planner 'nope'.*cem"):
        make_planner("nope", model)
    register_planner("missing", "latentplan.no_such_module:factory", replace=True)
    with pytest.raises(PlannerNotAvailable, match="latentplan.no_such_module"):
        make_planner("missing", model)
    with pytest.raises(ValueError, match="candidates is set by the evaluation budget"):
        make_planner("cem:candidates=10", model, Budget(evals=600))
    with pytest.raises(ValueError, match="too small"):
        make_planner("cem_gd", model, Budget(evals=10), horizon=4)
    with pytest.raises(ValueError, match="no_such_field"):
        make_planner("cem:no_such_field=1", model, Budget(evals=600))
    with pytest.raises(ValueError, match="already registered"):
        register_planner("cem", _counting_factory)
    with pytest.raises(ValueError, match="field=value"):
        PlannerSpec.parse("cem:iterations")
    with pytest.raises(ValueError, match="Budget.evals"):
        Budget(evals=0)
    with pytest.raises(ValueError, match="policy.pt"):
        make_planner("policy", model)


def test_mcts_takes_a_trained_critic_by_path(tmp_path):
    """`mcts:value=<path>` bootstraps the tree's leaves with the stored critic and its discount."""
    import torch

    from latentplan.planners.value import ValueConfig, ValueLearner

    learner = ValueLearner(ValueConfig(hidden=(4,), discount=0.9), 1, seed=3)
    path = tmp_path / "value.pt"
    lp_io.save_critic(learner, path)
    model = point_model()
    build = mcts_factory(model, Budget(evals=80), 3, {"value": str(path)})
    objective = build.objective(model)
    state = model.from_observation(torch.tensor([[0.3], [-0.2]]))
    assert objective.discount == 0.9
    assert torch.equal(objective.value(state), learner.value(state))
    assert build.planner.config.simulations == 10  # 80 evaluations / 8 children
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a latentplan checkpoint"):
        mcts_factory(model, Budget(evals=80), 3, {"value": str(tmp_path / "other.pt")})


@pytest.mark.parametrize("teacher", ["cem", "icem", "mppi", "cem_softmax", "cem_gd", "gradient", "ilqr", "mcts"])
def test_a_distillation_teacher_is_the_registry_planner_at_the_asked_horizon(teacher):
    """One resolution of a name: `latentplan distill --teacher mcts --horizon 12` plans 12 steps deep
    (it used to drop the horizon for MCTS and plan at depth 5)."""
    model = point_model()
    cfg = DistillRunConfig(checkpoint="unused.pt", teacher=teacher, horizon=7)
    planner = make_teacher(cfg, model)
    assert type(planner) is type(make_planner(teacher, model, horizon=7).planner)
    assert repr(planner.config) == repr(make_planner(teacher, model, horizon=7).planner.config)
    plan = planner.plan(planner_objective(model), model.from_observation(torch.zeros(1, 1)),
                        generator=torch.Generator().manual_seed(0))
    assert plan.actions.shape == (1, 7, 1)
    if teacher in PRESETS:
        preset, _ = PRESETS[teacher]
        assert all(getattr(planner.config, k) == v for k, v in preset.items())


def test_a_distillation_teacher_takes_overrides_and_a_budget():
    model = point_model()
    cfg = DistillRunConfig(checkpoint="unused.pt", teacher="cem:iterations=3,elites=4", horizon=5, budget_evals=600)
    planner = make_teacher(cfg, model)
    assert planner.config.iterations == 3 and planner.config.elites == 4 and planner.config.model_evals <= 600
    assert planner.config.candidates == 600 // (3 * 5)
    with pytest.raises(ValueError, match="field=value"):
        DistillRunConfig(checkpoint="unused.pt", teacher="cem:iterations")
    with pytest.raises(ValueError, match="unknown planner 'nope'"):
        make_teacher(DistillRunConfig(checkpoint="unused.pt", teacher="nope"), model)


def planner_objective(model):
    from latentplan.planners.objective import Objective

    return Objective(model)


def test_the_facade_configs_share_the_validators():
    """One message shape for every config: `<Class>.<field> must be ...; got ...`, wrong types included."""
    import latentplan as lp
    from latentplan.compare import CompareConfig

    cases = [
        (lambda: lp.TrainConfig(batch_size=2.5), "TrainConfig.batch_size must be an int >= 1; got 2.5"),
        (lambda: lp.TrainConfig(grad_clip=float("nan")), "TrainConfig.grad_clip must be a positive number; got nan"),
        (lambda: lp.TrainConfig(exploration_noise=-0.1), r"TrainConfig.exploration_noise must be in \[0, inf\)"),
        (lambda: lp.TrainConfig(episodes=3, seed_episodes=5), r"TrainConfig.seed_episodes must be in \[1, 3\]"),
        (lambda: lp.TrainConfig(obs="rgb"), "TrainConfig.obs must be one of 'state', 'pixels'; got 'rgb'"),
        (lambda: Budget(evals=True), "Budget.evals must be an int >= 1 or None; got True"),
        (lambda: Budget(ms=float("inf")), "Budget.ms must be a positive number or None; got inf"),
        (lambda: DistillRunConfig(checkpoint="c", dagger_beta=1.5), r"DistillRunConfig.dagger_beta must be in \[0, 1\]"),
        (lambda: CompareConfig(checkpoint="c", episodes=0), "CompareConfig.episodes must be an int >= 1; got 0"),
        (lambda: CompareConfig(checkpoint="c", planners=("cem:iterations",)), "field=value"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_mppi_is_the_published_planner_and_cem_softmax_the_renamed_refit():
    """`mppi` builds `MPPI` with K = (E // H - 1) // iterations samples (the value's rollout is the
    last H), warm-started; `cem_softmax` is CEM with the softmax-weighted refit."""
    from latentplan.planners import CEM, MPPI

    model = point_model()
    build = make_planner("mppi", model, Budget(evals=6000), horizon=12)
    assert type(build.planner) is MPPI and build.warm_start is True
    assert build.planner.config.samples == 499 and build.expected_evals == 12 * (499 + 1) == 6000
    two = make_planner("mppi:iterations=2,include_nominal=True", model, Budget(evals=6000), horizon=12)
    assert two.planner.config.samples == 248 and two.expected_evals == 12 * (2 * 249 + 1) <= 6000
    assert make_planner("mppi", model, Budget(ms=5.0)).planner.config.iterations == 100_000
    with pytest.raises(ValueError, match="samples is set by the evaluation budget"):
        make_planner("mppi:samples=10", model, Budget(evals=600))
    with pytest.raises(ValueError, match="too small for MPPI"):
        make_planner("mppi", model, Budget(evals=20), horizon=12)
    soft = make_planner("cem_softmax", model, Budget(evals=6000), horizon=12)
    assert type(soft.planner) is CEM and soft.planner.config.refit == "mppi"


def test_cem_family_spends_large_budgets_on_iterations_and_keeps_small_sizes():
    """Under an evaluation budget the CEM family fits J to five iterations, caps it (`MAX_CANDIDATES`)
    and lets `max_evals` = the budget decide the iterations; 6,000 evaluations at H = 12 keep the
    sizes the cartpole tables were measured with. `planet` is PlaNet's fixed count; a time budget
    leaves the evaluations uncapped."""
    from latentplan.planners import CEMConfig
    from latentplan.registry import MAX_CANDIDATES

    def config(spec, **budget):
        build = make_planner(spec, None, Budget(**budget), horizon=12)
        return build.planner.config, build.expected_evals

    cfg, expected = config("cem", evals=6000)
    assert (cfg.candidates, cfg.elites, cfg.planned_iterations, cfg.max_evals, expected) == (100, 10, 5, 6000, 6000)
    cfg, expected = config("icem", evals=6000)
    assert (cfg.candidates, cfg.planned_iterations, expected) == (144, 5, 5988)
    assert (cfg.noise_beta, cfg.white_fraction) == (2.0, 0.5)
    cfg, expected = config("cem_gd", evals=6000)
    assert (cfg.candidates, cfg.elites, cfg.planned_iterations, cfg.max_evals, expected) == (75, 10, 5, 6000, None)
    assert cfg.polish == 0.25 and cfg.model_evals == 4500  # the iterations get three quarters: 5 x 12 x 75
    cfg, expected = config("cem_gd:gradient.iterations=3,polish=0.0", evals=6000)  # the former preset
    assert (cfg.candidates, cfg.elites, cfg.planned_iterations, expected) == (34, 6, 5, 5640)
    assert MAX_CANDIDATES == {"cem": 300, "cem_gd": 150, "icem": 1000}
    cfg, expected = config("cem", evals=120_000)
    assert (cfg.candidates, cfg.elites, cfg.planned_iterations, expected) == (300, 10, 33, 33 * 12 * 300)
    cfg, expected = config("cem_softmax", evals=120_000)  # no cap: five iterations of the fitted J
    assert (cfg.candidates, cfg.planned_iterations, expected) == (2000, 5, 120_000)
    cfg, expected = config("planet", evals=120_000)
    assert (cfg.candidates, cfg.elites, cfg.iterations, cfg.max_evals, cfg.tol) == (1000, 100, 10, None, 0.0)
    assert config("planet")[0] == CEMConfig(max_evals=None, tol=0.0)  # PlaNet's planner exactly
    cfg, _ = config("cem:iterations=10", evals=120_000)  # a fixed count: J fitted to it
    assert (cfg.candidates, cfg.planned_iterations) == (1000, 10)
    cfg, expected = config("cem", ms=50.0)
    assert cfg.max_evals is None and cfg.iterations == 100_000 and expected is None
