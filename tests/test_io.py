"""latentplan.io: the checkpoint envelope, atomic writes and JSON-lines logs."""

import json

import pytest
import numpy as np
import torch

from latentplan import io
from latentplan.planners.distill import DistillConfig, Distiller
from latentplan.planners.policy import GaussianPolicy, PolicyConfig
from latentplan.planners.value import ValueConfig, ValueLearner
from latentplan.worldmodels.rssm import RSSMConfig, RSSMWorldModel
from latentplan.worldmodels.state import LatentState


def test_an_envelope_round_trips_and_names_what_it_holds(tmp_path):
    path = io.save(tmp_path / "sub" / "c.pt", "critic", {"hidden": [4, 4], "discount": 0.99},
                   {"w": torch.arange(3.0), "step": 7})
    env = io.load(path, "critic")
    assert (env.kind, env.version, env.config) == ("critic", io.VERSION, {"hidden": [4, 4], "discount": 0.99})
    assert torch.equal(env.state["w"], torch.arange(3.0)) and env.state["step"] == 7
    assert io.load(path, ("policy", "critic")).kind == "critic"
    with pytest.raises(io.CheckpointError, match="holds a 'critic' checkpoint, not a policy"):
        io.load(path, "policy")
    with pytest.raises(ValueError, match="kind must be one of"):
        io.save(tmp_path / "x.pt", "weights", {}, {})
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.pt", "run")


def test_foreign_newer_and_truncated_files_are_refused_by_name(tmp_path):
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(io.CheckpointError, match="not a latentplan checkpoint"):
        io.load(tmp_path / "other.pt", "run")
    torch.save({"latentplan": io.VERSION + 1, "kind": "run", "config": {}, "state": {}}, tmp_path / "new.pt")
    with pytest.raises(io.CheckpointError, match="newer latentplan"):
        io.load(tmp_path / "new.pt", "run")
    good = io.save(tmp_path / "good.pt", "run", {}, {"w": torch.ones(1000)})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(io.CheckpointError, match="not a readable"):
        io.load(tmp_path / "cut.pt", "run")
    torch.save({"array": np.zeros(3)}, tmp_path / "pickled.pt")  # objects weights_only refuses: one short line
    with pytest.raises(io.CheckpointError, match="Python objects other than tensors") as err:
        io.load(tmp_path / "pickled.pt", "run")
    assert "trusted source" not in str(err.value) and len(str(err.value)) < 300


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path):
    path = io.atomic_write_text(tmp_path / "config.json", '{"a": 1}')

    def half_then_crash(f):
        f.write(b'{"a": ')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        io.atomic_write(path, half_then_crash)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind


def test_jsonl_rows_survive_a_line_cut_short(tmp_path):
    path = tmp_path / "m.jsonl"
    io.append_jsonl(path, [{"episode": 1}, {"episode": 2}])
    with open(path, "a") as f:
        f.write('{"episode": 3, "ret')  # killed mid-write
    io.append_jsonl(path, [{"episode": 3}])  # the resumed run appends after the fragment
    with pytest.warns(RuntimeWarning, match="skipped 1 line"):
        rows = io.read_jsonl(path)
    assert rows == [{"episode": 1}, {"episode": 2}, {"episode": 3}]  # only the fragment is lost


def test_a_policy_round_trips_and_other_files_are_refused(tmp_path):
    """The same sizes, bounds, config and actions after `save_policy` / `load_policy`."""
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([1.0, 3.0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        policy = GaussianPolicy(5, 2, low, high, PolicyConfig(hidden=8, layers=1, layer_norm=True))
    path = io.save_policy(policy, tmp_path / "sub" / "policy.pt")
    loaded = io.load_policy(path)
    assert not loaded.training and loaded.config == policy.config
    torch.testing.assert_close(loaded.action_low, low)
    torch.testing.assert_close(loaded.action_high, high)
    s = LatentState(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(6, 2))
    torch.testing.assert_close(loaded.act(s, deterministic=True), policy.act(s, deterministic=True))
    # a policy file from before the envelope still loads
    legacy = {"format": "latentplan-policy-1", "feature_dim": 5, "action_dim": 2, "low": low.tolist(),
              "high": high.tolist(), "config": {"hidden": 8, "layers": 1, "layer_norm": True},
              "state_dict": policy.state_dict()}
    torch.save({**legacy, "config": {**PolicyConfig(hidden=8, layers=1, layer_norm=True).__dict__}},
               tmp_path / "old.pt")
    torch.testing.assert_close(io.load_policy(tmp_path / "old.pt").act(s, deterministic=True),
                               policy.act(s, deterministic=True))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(io.CheckpointError, match="not a latentplan checkpoint"):
        io.load_policy(tmp_path / "other.pt")
    io.save_critic(ValueLearner(ValueConfig(hidden=(4,)), 5), tmp_path / "critic.pt")
    with pytest.raises(io.CheckpointError, match="holds a 'critic' checkpoint, not a policy"):
        io.load_policy(tmp_path / "critic.pt")


def test_a_critic_round_trips_and_is_checked_against_the_features(tmp_path):
    learner = ValueLearner(ValueConfig(hidden=(4, 4), discount=0.9), 3, seed=2)
    learner.updates = 7
    path = io.save_critic(learner, tmp_path / "critic.pt")
    back = io.load_critic(path, feature_dim=3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    assert back.config == learner.config and back.updates == 7
    torch.testing.assert_close(back.value(x), learner.value(x))
    with pytest.raises(io.CheckpointError, match="takes 3 features; the model's beliefs have 4"):
        io.load_critic(path, feature_dim=4)
    io.save(tmp_path / "run.pt", "run", {}, {"model": {}})
    with pytest.raises(io.CheckpointError, match="holds no critic"):
        io.load_critic(tmp_path / "run.pt", feature_dim=3)


def test_a_distiller_and_a_model_round_trip(tmp_path):
    distiller = Distiller(DistillConfig(init_seed=0), 4, 1, [-1.0], [1.0])
    distiller.steps, distiller.labels = 5, 9
    io.save_distiller(distiller, tmp_path / "d.pt", with_data=False)
    back = io.load_distiller(tmp_path / "d.pt")
    assert (back.steps, back.labels) == (5, 9) and back.config == distiller.config
    for k, v in distiller.policy.state_dict().items():
        assert torch.equal(back.policy.state_dict()[k], v)
    model = RSSMWorldModel(RSSMConfig(obs_shape=(3,), action_dim=1, deter=8, stoch=2, hidden=8, embed=8))
    io.save_model(model, tmp_path / "m.pt")
    again = io.load_model(tmp_path / "m.pt")
    assert not again.training and again.config == model.config
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
