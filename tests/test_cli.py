"""The `latentplan` commands that read a trained model (`compare`, `control`, `distill`), run on a real
RSSM checkpoint trained by the session fixture `trained_checkpoint` (tests/conftest.py)."""

import dataclasses
import json

import pytest

from latentplan.cli import COMMANDS, _load, main


def test_compare_on_a_trained_checkpoint(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--checkpoint", str(trained_checkpoint), "--planners", "cem", "mppi", "--episodes", "1",
                 "--budget-evals", "240", "--max-decisions", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| cem | 240 evals | 1 |" in text and "| mppi | 240 evals | 1 |" in text
    assert {p.name for p in out.iterdir()} == {"cells.jsonl", "results.json", "results.csv", "return_vs_ms.png"}
    results = json.loads((out / "results.json").read_text())
    rows = {r["planner"]: r for r in results["rows"]}
    assert set(rows) == {"cem", "mppi"}
    for row in rows.values():  # the equal budget was kept: 240 model evaluations per decision
        assert row["episodes"] == 1 and row["model_evals_per_decision"] == 240
    assert main(["compare", "--checkpoint", str(trained_checkpoint), "--planners", "nope", "--out", str(out)]) == 2


def test_control_on_a_trained_checkpoint(trained_checkpoint, tmp_path, capsys):
    for mode in ("sync", "async"):
        stats_path = tmp_path / f"{mode}.json"
        code = main(["control", "--checkpoint", str(trained_checkpoint), "--rate", "20", "--steps", "4", "--mode", mode,
                     "--budget-evals", "240", "--json", str(stats_path)])
        assert code == 0
        text = capsys.readouterr().out
        assert "real-time factor 1.6" in text and "actions sent            4" in text
        stats = json.loads(stats_path.read_text())["stats"]
        assert stats["mode"] == mode and stats["steps"] == 4 and stats["invalid_actions"] == 0
        assert stats["controller"]["steps"] == 4  # planned or answered by the fallback, as the machine allows
        assert stats["robot"]["actions_received"] == 4 and stats["robot"]["actions_rejected"] == 0
    assert main(["control", "--checkpoint", str(trained_checkpoint), "--planner", "nope", "--steps", "1"]) == 2


def test_distill_on_a_trained_checkpoint(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "dst"
    code = main(["distill", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--horizon", "3",
                 "--teacher", "cem:iterations=2,candidates=16,elites=4", "--replay-states", "40",
                 "--fit-steps", "20", "--dagger-rounds", "1", "--dagger-episodes", "1", "--dagger-steps", "5",
                 "--eval-episodes", "1", "--no-eval-teacher", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "teacher cem:iterations=2,candidates=16,elites=4 (action target)" in text and "student return" in text
    assert {p.name for p in out.iterdir()} == {"distiller.pt", "loss.png", "metrics.json", "policy.pt"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 20 + 5 and metrics["labels"] >= 40
    assert len(metrics["student"]["returns"]) == 1
    assert main(["distill", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_a_flag_in_the_help(command, capsys):
    """The subcommands are generated from their configs: `latentplan <command> --help` lists every field."""
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    fields = [f.name for f in dataclasses.fields(_load(COMMANDS[command].config))]
    missing = [f for f in fields if f"--{f.replace('_', '-')}" not in text and f"--{f}." not in text
               and f"--{f.replace('_', '-')}." not in text and f"--no-{f.replace('_', '-')}" not in text]
    assert not missing, f"latentplan {command} --help lacks {missing}"


def test_a_bad_flag_is_reported_in_the_commands_own_terms(tmp_path, capsys):
    """A command's flags are parsed against its own config: a value its config refuses names the
    field (no tyro-internal names), and a misspelt flag suggests only that command's flags."""
    assert main(["train", "--planner.elites", "5000", "--run-dir", str(tmp_path / "r")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "elites (5000) cannot exceed candidates (1000)" in err and "__tyro" not in err
    assert "latentplan train --help" in err
    assert main(["demo", "--epsiodes", "3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--episodes" in err and "compare" not in err and "latentplan demo --help" in err
    assert not (tmp_path / "r").exists()  # nothing was started
