"""latentplan.io: the checkpoint envelope, atomic writes and JSON-lines logs."""

import json

import pytest
import torch

from latentplan import io


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
