"""Faults of the planner comparison, its statistics, the suite's report and the exploration ensemble
(session-12 probe): each test pins one defect that was found and fixed.

The world is test_compare's point x' = x + u (reward -(x' - 0.8)^2, 6 decisions per episode), so a
comparison takes milliseconds and every return can be computed by hand.
"""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch

import latentplan as lp
from latentplan.compare import CompareConfig, compare
from latentplan.evaluation import run_episode
from latentplan.registry import Budget, PlannerBuild, PlannerSpec, make_planner, register_planner
from latentplan.statistics import bootstrap_ci, finite_json
from latentplan.suite_report import aggregate, markdown_table
from latentplan.worldmodels import AnalyticModel
from latentplan.worldmodels.ensemble import EnsembleConfig, PredictorEnsemble

from test_compare import PointEnv, point_env, point_model

KW = dict(budgets=[Budget(evals=240)], horizon=4, env=point_env, progress=False)


def _strict(text: str):
    """Parse `text` as standard JSON: NaN / Infinity tokens are an error."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------ statistics
def test_bootstrap_ci_small_samples_match_scipy_and_bad_input_raises():
    for v in ([1.0, 2.0], [1.0, 2.0, 4.0]):
        ref = scipy.stats.bootstrap((np.array(v),), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                                    rng=np.random.default_rng(0)).confidence_interval
        assert bootstrap_ci(v) == (float(ref.low), float(ref.high))
    assert bootstrap_ci([1.0, 2.0]) == (1.0, 2.0)          # two values: the interval is their range
    assert bootstrap_ci([1.0, 2.0, 4.0]) == (4 / 3, 4.0)
    assert bootstrap_ci([4.0, 4.0]) == (4.0, 4.0)          # scipy's BCa is NaN here; equal values are exact
    assert bootstrap_ci([4.0]) is None and bootstrap_ci([]) is None
    # a NaN or inf return used to give None silently (shown as "one episode"); it is an error now
    for bad in ([1.0, float("nan"), 3.0], [1.0, float("inf")], [float("nan")]):
        with pytest.raises(ValueError, match="bootstrap_ci: values must be finite"):
            bootstrap_ci(bad)
    # confidence=95 gave None, -0.5 an interval with low > high; now both are errors
    for conf in (95, -0.5, 0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="bootstrap_ci: confidence must be in"):
            bootstrap_ci([1.0, 2.0, 3.0], confidence=conf)
    for n in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="n_resamples must be an int >= 2"):
            bootstrap_ci([1.0, 2.0, 3.0], n_resamples=n)


def test_finite_json_writes_nan_and_inf_as_null():
    data = {"a": [1.5, float("nan"), (float("inf"), -float("inf"))], "b": np.float64("nan"), "c": "NaN", "d": 3}
    out = finite_json(data)
    assert out == {"a": [1.5, None, [None, None]], "b": None, "c": "NaN", "d": 3}
    assert _strict(json.dumps(out, allow_nan=False)) == out


# ------------------------------------------------------------------------------- compare: input
@pytest.mark.parametrize("planners, extra, message", [
    (["cem"], dict(budgets=[Budget(evals=240), Budget(evals=240)]), "budgets must differ"),
    (["cem"], dict(budgets=[Budget(ms=50.0), Budget(ms=50.0000001)]), "budgets must differ"),  # same label
    (["cem", "cem:"], {}, "'cem' and 'cem:' are the same planner"),
    ([], {}, "give at least one planner"),
    (["cem"], dict(seed=-1), "seed must be an int >= 0; got -1"),
    (["cem"], dict(seed=1.5), "seed must be an int >= 0; got 1.5"),
    (["cem"], dict(episodes=2.5), "episodes must be an int >= 1; got 2.5"),
    (["cem"], dict(episodes=0), "episodes must be an int >= 1; got 0"),
    (["cem"], dict(max_decisions=0), "max_decisions must be an int >= 1 or None; got 0"),
])
def test_compare_refuses_input_that_used_to_run_wrongly(planners, extra, message):
    # duplicate budgets ran every cell twice (a row of 6 "episodes" with seeds [0, 0, 1, 1, 2, 2] and too
    # narrow an interval); "cem" and "cem:" two rows of one planner; [] an empty table; seed -1 and
    # episodes 2.5 failed deep in gymnasium / torch
    kw = {**KW, "episodes": 1, **extra}
    with pytest.raises(ValueError, match=message):
        compare(point_model(), planners, **kw)


def test_compare_config_and_run_episode_check_their_counts():
    with pytest.raises(ValueError, match="seed"):
        CompareConfig(checkpoint="x.pt", seed=-1)
    # max_decisions=0 used to run one decision
    with pytest.raises(ValueError, match="run_episode: max_decisions must be an int >= 1 or None; got 0"):
        run_episode(PointEnv(0), None, seed=0, max_decisions=0)


def test_copies_of_one_planner_under_explicit_labels_are_still_allowed():
    res = compare(point_model(), [PlannerSpec("cem", label="A"), PlannerSpec("cem", label="B")], episodes=2, **KW)
    assert res.rows[0]["returns"] == res.rows[1]["returns"]


# ----------------------------------------------------------------------------- compare: pairing
def test_cells_are_paired_whatever_the_planner_order_and_the_global_rng():
    a = compare(point_model(), ["cem", "mppi", "icem"], episodes=2, **KW)
    torch.manual_seed(123)
    np.random.seed(7)
    b = compare(point_model(), ["icem", "mppi", "cem"], episodes=2, **KW)
    ra = {(c["planner"], c["seed"]): c["return"] for c in a.cells}
    rb = {(c["planner"], c["seed"]): c["return"] for c in b.cells}
    assert ra == rb and len(ra) == 6


# ----------------------------------------------------------------------- compare: failing planner
class _Failing:
    """A planner that raises from its `after`-th call on."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    def plan(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("planner exploded")
        return self.inner.plan(*args, **kwargs)


def _failing_factory(model, budget, horizon, overrides):
    build = make_planner("cem", model, budget, horizon=horizon)
    return PlannerBuild(_Failing(build.planner, int(overrides.get("after", 0))), False, budget.ms,
                        build.expected_evals, f"failing after {overrides.get('after', 0)}")


def _hold_still_return(seed: int) -> float:
    """The return of 6 zero actions (the controller's safe action) from the seed's start, as PointEnv sums it."""
    x = np.random.default_rng(seed).uniform(-2, 2, size=1).astype(np.float32)
    return sum(float(-((x[0] - 0.8) ** 2)) for _ in range(6))


def test_a_failing_planner_is_reported_not_passed_off_as_its_return():
    register_planner("failing", _failing_factory, replace=True)
    res = compare(point_model(), ["cem", "failing", "failing:after=8"], episodes=2, **KW)
    cem, never, late = res.rows
    assert cem["fallbacks"] == cem["planner_failures"] == 0
    # every decision answered by the fallback (hold still): the row's return is the fallback's, exactly
    assert never["planner_failures"] == never["fallbacks"] == never["decisions"] == 12
    assert never["returns"] == [_hold_still_return(0), _hold_still_return(1)]
    assert late["planner_failures"] == late["fallbacks"] == 4  # calls 9..12: the last 4 decisions of seed 1
    table = res.table()
    assert f"| failing | 240 evals | 2 | {never['return_mean']:.1f} (12 fallbacks) |" in table
    assert table.count("\n") == 4  # the table itself keeps one line per row
    notes = res.notes()
    assert any(n.startswith("note: failing @ 240 evals: 12 of 12 decisions were answered by the controller's "
                            "fallback") for n in notes)
    assert any(n.startswith("note: failing:after=8 @ 240 evals: 4 of 12 decisions") for n in notes)
    assert not any("fallback" in n for n in notes if n.startswith("note: cem @"))


# ---------------------------------------------------------------------- compare: NaN / inf returns
def _nan_env(seed: int) -> PointEnv:
    env = PointEnv(seed)
    step = env.step

    def nan_step(action):
        obs, r, term, trunc, info = step(action)
        return obs, (float("nan") if seed == 1 and env.t == 3 else r), term, trunc, info

    env.step = nan_step
    return env


def test_a_nan_return_is_counted_has_no_interval_and_the_json_stays_standard(tmp_path):
    kw = {**KW, "env": _nan_env}
    res = compare(point_model(), ["cem"], episodes=3, out_dir=tmp_path, **kw)
    row = res.rows[0]
    assert row["nonfinite_returns"] == 1 and math.isnan(row["returns"][1]) and math.isnan(row["return_mean"])
    assert row["return_ci_low"] is None and row["return_ci_high"] is None
    assert [n for n in res.notes() if "NaN" in n] == [
        "note: cem @ 240 evals: 1 of 3 episode returns are NaN or inf (no interval)"]
    data = _strict((tmp_path / "results.json").read_text())  # was: the token NaN, which strict readers refuse
    assert data["rows"][0]["returns"][1] is None and data["rows"][0]["return_mean"] is None
    assert data["rows"][0]["returns"][0] == row["returns"][0]
    # cells.jsonl keeps the NaN (Python's json reads it back) so a resume reproduces the row
    again = compare(point_model(), ["cem"], episodes=3, out_dir=tmp_path, **kw)
    assert again.rows[0]["nonfinite_returns"] == 1 and again.rows[0]["returns"][0] == row["returns"][0]


# ------------------------------------------------------------------------------- compare: resume
def _linear(sign: float) -> AnalyticModel:
    return AnalyticModel.linear(np.eye(1), sign * np.eye(1), np.eye(1), action_bound=0.5)


def test_resume_does_not_serve_another_models_or_planners_cells(tmp_path):
    # a model object: keyed by the digest of its class and weights (B = +1 and B = -1 differ)
    compare(_linear(1.0), ["cem"], episodes=2, out_dir=tmp_path / "m", **KW)
    fresh = compare(_linear(-1.0), ["cem"], episodes=2, **KW)
    again = compare(_linear(-1.0), ["cem"], episodes=2, out_dir=tmp_path / "m", **KW)
    assert again.rows[0]["returns"] == fresh.rows[0]["returns"]
    assert len((tmp_path / "m" / "cells.jsonl").read_text().splitlines()) == 4
    # the same model again reuses its cells
    calls = []

    def counting(model, budget, horizon, overrides):
        calls.append(1)
        return make_planner(f"cem:iterations={overrides.get('it', 1)},tol=0", model, budget, horizon=horizon)

    # a planner re-registered with another configuration under the same label runs again
    register_planner("mine", lambda m, b, h, o: counting(m, b, h, {"it": 1}), replace=True)
    one = compare(point_model(), ["mine"], episodes=2, out_dir=tmp_path / "p", **KW)
    register_planner("mine", lambda m, b, h, o: counting(m, b, h, {"it": 5}), replace=True)
    five = compare(point_model(), ["mine"], episodes=2, out_dir=tmp_path / "p", **KW)
    ref = compare(point_model(), ["mine"], episodes=2, **KW)
    assert "iterations=5" in five.rows[0]["description"] and "iterations=1" in one.rows[0]["description"]
    assert five.rows[0]["returns"] == ref.rows[0]["returns"] != one.rows[0]["returns"]
    # and unchanged, it is reused (no new lines)
    lines = len((tmp_path / "p" / "cells.jsonl").read_text().splitlines())
    compare(point_model(), ["mine"], episodes=2, out_dir=tmp_path / "p", **KW)
    assert len((tmp_path / "p" / "cells.jsonl").read_text().splitlines()) == lines == 4


# -------------------------------------------------------------------------------- suite report
def _cell(seed, returns, status="done"):
    return {"task": "t", "recipe": "r", "seed": seed, "status": status, "final_returns": returns,
            "env_steps": 1000, "episodes": 5, "wall_s": 60.0, "curve": [[500, 1.0], [1000, 2.0]], "train_curve": []}


def test_suite_rows_without_final_evaluation_are_not_failures():
    # final_eval_episodes=0 (allowed) used to show finished cells as "0 (+2 failed)"
    row = aggregate([_cell(0, []), _cell(1, [])])[0]
    assert (row["seeds"], row["failed"], row["return_mean"], row["ci_low"]) == (2, 0, None, None)
    assert "| t | r | — | — | — | 2 | 1,000 | 5 | 1.0 min |" in markdown_table([row])


def test_suite_report_with_a_nan_final_return(tmp_path):
    # a NaN final return used to raise from t_interval and lose the whole grid's report
    cells = [_cell(0, [1.0, float("nan")]), _cell(1, [5.0, 7.0]), _cell(2, [2.0, 4.0])]
    row = aggregate(cells)[0]
    assert row["nonfinite_returns"] == 1 and row["ci_low"] is None and math.isnan(row["return_mean"])
    assert "t/r: 1 final return(s) are NaN or inf (no interval)" in markdown_table([row], cells)
    # finite seeds: the Student t interval over the per-seed means, as scipy gives it
    ok = aggregate(cells[1:])[0]
    v = np.array([6.0, 3.0])
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert (ok["ci_low"], ok["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    from latentplan.suite import SuiteConfig
    from latentplan.suite_report import write_report

    cfg = SuiteConfig(tasks=("gym:Pendulum-v1",), recipes=("tiny",), seeds=(0, 1, 2), steps=100, ray=False,
                      out=str(tmp_path))
    files = write_report(SimpleNamespace(cells=cells, skipped=0, out=str(tmp_path)), cfg, wall_s=1.0)
    data = _strict(open(files["json"]).read())
    assert data["rows"][0]["return_mean"] is None and data["cells"][0]["final_returns"] == [1.0, None]


# -------------------------------------------------------------------------------- the ensemble
def test_disagreement_with_an_ensemble_of_another_model_names_both_sizes():
    model = AnalyticModel(lambda x, u: x + u, lambda x: -(x ** 2).sum(-1), 2, [-1, -1], [1, 1])
    g = torch.Generator().manual_seed(0)
    state = model.from_observation(torch.zeros(1, 2))
    planner = lp.CEM(horizon=3, iterations=2, candidates=16, elites=4)
    wrong = PredictorEnsemble(EnsembleConfig(members=3, hidden=8, layers=1), 7, 2, generator=g)
    with pytest.raises(ValueError, match=r"in_dim = 7 inputs, but this model gives 4 \(features 2 \+ action 2\)"):
        planner.plan(lp.Objective(model, rewards=[lp.disagreement(wrong)]), state)
    arrival = PredictorEnsemble(EnsembleConfig(members=3, hidden=8, layers=1, condition="arrival"), 5, 2, generator=g)
    with pytest.raises(ValueError, match=r"in_dim = 5 inputs, but this model gives 2"):
        planner.plan(lp.Objective(model, rewards=[lp.disagreement(arrival)]), state)
    # a fitting ensemble plans
    fits = PredictorEnsemble(EnsembleConfig(members=3, hidden=8, layers=1), 4, 2, generator=g)
    assert planner.plan(lp.Objective(model, rewards=[lp.disagreement(fits)]), state).actions.shape == (1, 3, 2)


def test_disagreement_of_non_finite_rows_and_loss_input_checks():
    g = torch.Generator().manual_seed(0)
    ens = PredictorEnsemble(EnsembleConfig(members=3, hidden=8, layers=1), 4, 2, generator=g)
    x = torch.randn(3, 4, generator=g)
    x[0, 0], x[1, 2] = float("nan"), float("inf")
    d = ens.disagreement(x).detach()
    p = ens.forward_loop(x[2:]).detach()
    # documented: NaN/inf rows give NaN, the other rows the population variance over members
    assert math.isnan(d[0]) and math.isnan(d[1])
    assert float(d[2]) == pytest.approx(float(((p - p.mean(0)) ** 2).mean(0).mean()), rel=1e-6)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        ens.loss(torch.zeros(5, 4), [[0.0, 0.0]] * 5)
    with pytest.raises(ValueError, match=r"inputs must be \[N, 4\]; got \[5, 3\]"):
        ens.loss(torch.zeros(5, 3), torch.zeros(5, 2))


# ------------------------------------------------------------------------ paired by seed
def test_paired_difference_is_scipys_paired_t_and_bca_of_the_differences():
    from latentplan.statistics import paired_difference

    a = np.array([-0.144, -0.112, -2.796, -7.784, -0.284])
    b = np.array([-0.122, -0.078, -2.325, -7.124, -0.295])
    d = paired_difference(a, b)
    ref = scipy.stats.bootstrap((b - a,), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                                rng=np.random.default_rng(0)).confidence_interval
    assert d.ci == (float(ref.low), float(ref.high))
    assert d.p_value == pytest.approx(scipy.stats.ttest_rel(b, a).pvalue, rel=1e-12)
    lo, hi = scipy.stats.t.interval(0.95, 4, loc=(b - a).mean(), scale=scipy.stats.sem(b - a))
    assert d.t_ci == pytest.approx((lo, hi), rel=1e-12)
    assert (d.n, d.mean, d.wins, d.ties, d.losses) == (5, pytest.approx((b - a).mean()), 4, 0, 1)
    # the unpaired view of the same numbers sees nothing (Welch p = 0.91) where the paired one sees 4 of 5 wins
    assert scipy.stats.ttest_ind(b, a, equal_var=False).pvalue > 0.9 and d.ci[0] > 0
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.mean, same.ci, same.t_ci, same.p_value, same.ties) == (0.0, (0.0, 0.0), (0.0, 0.0), None, 3)
    one = paired_difference([1.0], [3.0])
    assert (one.n, one.mean, one.ci, one.t_ci, one.p_value, one.wins) == (1, 2.0, None, None, None, 1)
    for bad in (([1.0, 2.0], [1.0]), ([], []), ([1.0, float("nan")], [1.0, 2.0])):
        with pytest.raises(ValueError, match="paired_difference"):
            paired_difference(*bad)


def test_compare_result_pairs_planners_by_seed(capsys):
    from latentplan.cli.compare import _print_paired
    from latentplan.statistics import paired_difference

    res = compare(point_model(), ["cem:iterations=1,tol=0", "cem"], episodes=3, **KW)
    ra, rb = res.rows
    d = res.paired("cem:iterations=1,tol=0", "cem")
    assert d == paired_difference(ra["returns"], rb["returns"]) and d.n == 3
    with pytest.raises(ValueError, match="no episodes of 'nope'"):
        res.paired("cem", "nope")
    with pytest.raises(ValueError, match="no episodes of 'cem' at '1 evals'"):
        res.paired("cem", "cem:iterations=1,tol=0", "1 evals")
    two = compare(point_model(), ["cem"], episodes=1, budgets=[Budget(evals=240), Budget(evals=480)], horizon=4,
                  env=point_env, progress=False)
    with pytest.raises(ValueError, match="pass budget="):
        two.paired("cem", "cem")
    _print_paired(res)
    out = capsys.readouterr().out
    assert f"| cem - cem:iterations=1,tol=0 | 240 evals | 3 | {d.mean:+.1f} |" in out


class _NoRepr:
    """A planner without its own `__repr__`: its default repr holds an address that changes per process."""

    def __init__(self, inner):
        self.inner = inner

    def plan(self, *args, **kwargs):
        return self.inner.plan(*args, **kwargs)


def test_resume_ignores_object_addresses_in_a_description(tmp_path):
    calls = []

    def factory(model, budget, horizon, overrides):
        calls.append(1)
        build = make_planner("cem", model, budget, horizon=horizon)
        planner = _NoRepr(build.planner)
        return PlannerBuild(planner, False, budget.ms, build.expected_evals, repr(planner))  # as the docs' example

    register_planner("norepr", factory, replace=True)
    first = compare(point_model(), ["norepr"], episodes=2, out_dir=tmp_path, **KW)
    again = compare(point_model(), ["norepr"], episodes=2, out_dir=tmp_path, **KW)
    assert " at 0x" in first.rows[0]["description"] and again.rows[0]["returns"] == first.rows[0]["returns"]
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 2  # reused, not run again
