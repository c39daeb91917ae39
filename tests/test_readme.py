"""The README's Python example runs as written (with a smaller training budget) and plans in bounds."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert "lp.demo_config(episodes=7" in code
    code = code.replace("lp.demo_config(episodes=7", "lp.demo_config(episodes=3, seed_episodes=2, updates_per_episode=2, progress=False")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    plan = scope["plan"]
    assert plan.actions.shape == (1, 12, 1)
    assert plan.actions.abs().max() <= 1.0
    assert plan.info["model_evals"] == 12 * 5 * 100
    assert torch.isfinite(plan.value).all()
    assert scope["summary"].episodes == 3 and (tmp_path / "runs" / "quick" / "curve.png").exists()
