"""Inputs of the world models and the replay buffer: bad values get an error that names them, and
the behaviour fixes give the right numbers (Python indexing of beliefs, a float64 RSSM end to end,
an append-only episode folder)."""

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from latentplan.worldmodels import AnalyticModel, FusedRSSM, LatentState, ReplayBuffer, RSSMConfig, RSSMWorldModel

CFG = RSSMConfig(obs_shape=(5,), action_dim=1, deter=8, stoch=4, hidden=16, embed=8)


def _model(**kw) -> RSSMWorldModel:
    torch.manual_seed(0)
    return RSSMWorldModel(dataclasses.replace(CFG, **kw))


def _state() -> LatentState:
    return LatentState(torch.arange(6.0).reshape(3, 2), torch.arange(3.0).reshape(3, 1))


# ---------------------------------------------------------------- LatentState
def test_index_follows_python_rules_for_integers():
    s = _state()
    assert s.index(-1).deter.tolist() == [[4.0, 5.0]] and s.index(-1).stoch.tolist() == [[2.0]]
    assert s.index(-3).deter.tolist() == [[0.0, 1.0]]
    assert s.index(np.int64(1)).deter.tolist() == [[2.0, 3.0]]
    assert s.index(torch.tensor(2)).stoch.tolist() == [[2.0]]
    assert s.index(torch.tensor([True, False, True])).stoch.tolist() == [[0.0], [2.0]]
    for bad in (3, -4, np.int64(7)):
        with pytest.raises(IndexError, match=rf"LatentState.index: row {int(bad)} is out of range for a batch of 3"):
            s.index(bad)
    with pytest.raises(TypeError, match="LatentState.index: a bool"):
        s.index(True)


def test_expand_and_cat_name_their_arguments():
    s = _state()
    assert s.expand(2).stoch[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="LatentState.expand: n must be an int >= 0; got -1"):
        s.expand(-1)
    with pytest.raises(TypeError, match="LatentState.expand: n must be an int"):
        s.expand(2.0)
    with pytest.raises(ValueError, match="LatentState.cat: states is empty"):
        LatentState.cat([])
    with pytest.raises(ValueError, match=r"LatentState.cat: states\[1\] has D=2, S=2"):
        LatentState.cat([s, LatentState(torch.zeros(1, 2), torch.zeros(1, 2))])
    with pytest.raises(TypeError, match="LatentState: deter must be a torch.Tensor; got ndarray"):
        LatentState(np.zeros((3, 2)), torch.zeros(3, 1))
    assert LatentState.cat([s.index(2), s.index(0)]).deter.tolist() == [[4.0, 5.0], [0.0, 1.0]]


# ---------------------------------------------------------------- RSSMConfig.validate
@pytest.mark.parametrize("field, value", [
    ("deter", 0), ("deter", -5), ("deter", 8.5), ("stoch", 0), ("hidden", 0), ("embed", -3), ("action_dim", 0),
    ("probe_dim", -1), ("image_bits", 0), ("image_bits", 9), ("min_std", 0.0), ("min_std", -1.0),
    ("min_std", math.nan), ("obs_std", 0.0), ("obs_std", -1.0), ("reward_std", 0.0), ("probe_std", math.inf),
    ("free_nats", -1.0), ("kl_scale", math.nan), ("kl_scale", -1.0), ("reward_scale", math.inf),
    ("obs_shape", (0,)), ("obs_shape", (-2,)), ("obs_shape", (5, 1)), ("obs_shape", (3, 32, 32)),
    ("action_low", (math.nan,)), ("obs_names", (("x", 3, 9),)), ("obs_names", (("x", 2, 1),)),
    ("obs_names", (("obs", 0, 1),)), ("obs_names", (("x", 0, 1), ("x", 1, 2))), ("obs_names", (("x", 0),)),
    ("probe_names", (("x", 0, 1),)),
])
def test_config_rejects_each_bad_field_by_name(field, value):
    extra = {"action_high": (1.0,)} if field == "action_low" else {}
    with pytest.raises(ValueError, match=rf"RSSMConfig\.{field}\b"):
        RSSMWorldModel(dataclasses.replace(CFG, **{field: value}, **extra))


def test_config_action_bounds_must_come_in_a_consistent_pair():
    with pytest.raises(ValueError, match=r"RSSMConfig.action_high must be given with action_low"):
        RSSMWorldModel(dataclasses.replace(CFG, action_low=(-1.0,)))
    with pytest.raises(ValueError, match=r"RSSMConfig.action_low must be <= action_high; got \(1.0,\) and \(-1.0,\)"):
        RSSMWorldModel(dataclasses.replace(CFG, action_low=(1.0,), action_high=(-1.0,)))
    m = RSSMWorldModel(dataclasses.replace(CFG, action_low=(-2.0,), action_high=(0.5,)))
    assert m.action_low.tolist() == [-2.0] and m.action_high.tolist() == [0.5]
    # an unbounded action space (gymnasium's Box(-inf, inf)) is a valid model; planners that need a box refuse it
    m = RSSMWorldModel(dataclasses.replace(CFG, action_low=(-math.inf,), action_high=(math.inf,)))
    assert m.action_low.tolist() == [-math.inf] and m.action_high.tolist() == [math.inf]


def test_obs_names_may_not_replace_the_decoded_observation():
    with pytest.raises(ValueError, match=r"RSSMConfig.obs_names: the name 'obs' is reserved"):
        RSSMWorldModel(dataclasses.replace(CFG, obs_names=(("obs", 0, 1),)))
    with pytest.raises(ValueError, match=r"RSSMConfig.obs_names: the name 'state' is reserved"):
        RSSMWorldModel(dataclasses.replace(CFG, probe_dim=2, obs_names=(("state", 0, 1),)))
    m = _model(obs_names=(("x", 0, 1),))
    dec = m.decode(m.initial(3))
    assert dec["obs"].shape == (3, 5) and torch.equal(dec["x"], dec["obs"][:, :1])


# ---------------------------------------------------------------- float64
def test_float64_rssm_observes_imagines_and_trains_in_float64():
    m32 = _model()
    m64 = _model().double()
    b, t = 2, 3
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(b, t, 5, generator=g)
    action = torch.rand(b, t, 1, generator=g) * 2 - 1
    reward = torch.randn(b, t, generator=g)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    s = m64.initial(b)
    assert s.deter.dtype == torch.float64 and s.stoch.dtype == torch.float64
    post64 = m64.observe(s, action[:, 0].double(), obs[:, 0].double(), first[:, 0], sample=False)
    post32 = m32.observe(m32.initial(b), action[:, 0], obs[:, 0], first[:, 0], sample=False)
    assert post64.stoch.dtype == torch.float64
    torch.testing.assert_close(post64.stoch.float(), post32.stoch, rtol=1e-5, atol=1e-6)
    nxt = m64.imagine_step(post64, action[:, 1].double(), sample=False)
    assert nxt.deter.dtype == torch.float64
    torch.testing.assert_close(nxt.deter.float(), m32.imagine_step(post32, action[:, 1], sample=False).deter,
                               rtol=1e-5, atol=1e-6)
    # the ELBO in float64 (float32 batches, as the replay buffer gives, are cast)
    terms64 = m64.elbo(obs, action, reward, first, generator=torch.Generator().manual_seed(0))
    assert terms64.loss.dtype == torch.float64 and terms64.posterior.deter.dtype == torch.float64
    terms64.loss.backward()
    assert m64.pre_gru.weight.grad.dtype == torch.float64
    assert math.isfinite(float(terms64.loss.detach()))


def test_quadratic_action_cost_follows_the_action_dtype():
    R = np.array([[0.1, 0.02], [0.02, 0.3]])
    cost = AnalyticModel.quadratic_action_cost(torch.tensor(R))
    u = torch.tensor([[1.0 + 1e-9, -2.0], [0.5, 0.25]], dtype=torch.float64)
    out = cost(None, u)
    want = -np.einsum("ni,ij,nj->n", u.numpy(), R, u.numpy())
    assert out.dtype == torch.float64 and np.abs(out.numpy() - want).max() < 1e-15
    out32 = AnalyticModel.quadratic_action_cost(R)(None, u.float())
    assert out32.dtype == torch.float32 and np.abs(out32.numpy() - want).max() < 1e-5
    with pytest.raises(ValueError, match=r"quadratic_action_cost: R must be a square \[A, A\] matrix; got \(2,\)"):
        AnalyticModel.quadratic_action_cost([0.1, 0.2])
    with pytest.raises(ValueError, match=r"quadratic_action_cost: actions \[N, A=3\] do not fit R \(2, 2\)"):
        cost(None, torch.zeros(1, 3, dtype=torch.float64))


# ---------------------------------------------------------------- rollout / elbo sizes
def _analytic() -> AnalyticModel:
    return AnalyticModel.linear(np.eye(2), np.array([[0.0], [0.1]]), np.eye(2))


@pytest.mark.parametrize("kind", ["rssm", "fused", "analytic"])
def test_rollout_of_zero_steps_names_the_horizon(kind):
    model = {"rssm": _model, "fused": lambda: FusedRSSM(_model()), "analytic": _analytic}[kind]()
    s = model.initial(3)
    with pytest.raises(ValueError, match=r"rollout: the horizon H = actions.shape\[1\] must be >= 1; got actions \[3, 0, 1\]"):
        model.rollout(s, torch.zeros(3, 0, 1))
    with pytest.raises(ValueError, match=r"rollout: actions must be \[N, H, A\] \(3-D\); got \[3, 1\]"):
        model.rollout(s, torch.zeros(3, 1))


def test_elbo_names_empty_sequences_and_nonfinite_inputs():
    m = _model()
    b, t = 2, 3
    obs, act, rew, first = torch.randn(b, t, 5), torch.zeros(b, t, 1), torch.zeros(b, t), torch.zeros(b, t, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.elbo: .*T must be >= 1; got B = 2, T = 0"):
        m.elbo(obs[:, :0], act[:, :0], rew[:, :0], first[:, :0])
    with pytest.raises(ValueError, match=r"RSSMWorldModel.elbo: obs contains NaN or inf"):
        m.elbo(torch.full_like(obs, math.nan), act, rew, first)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.elbo: reward contains NaN or inf"):
        m.elbo(obs, act, torch.full_like(rew, math.inf), first)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.elbo: action, reward contain NaN or inf"):
        m.elbo(obs, torch.full_like(act, math.nan), torch.full_like(rew, math.nan), first)


# ---------------------------------------------------------------- FusedRSSM
def test_fused_rollout_checks_its_inputs_like_imagine_step():
    f = FusedRSSM(_model())
    s = f.initial(3)
    cases = [
        (torch.zeros(3, 5, 2), ValueError, r"FusedRSSM.rollout: actions must be \[3, 5, 1\] float32 on cpu.*got \[3, 5, 2\]"),
        (torch.zeros(4, 5, 1), ValueError, r"FusedRSSM.rollout: actions must be \[3, 5, 1\].*got \[4, 5, 1\]"),
        (torch.zeros(3, 5, 1, dtype=torch.float64), ValueError, r"FusedRSSM.rollout: actions .* got \[3, 5, 1\] float64"),
        (np.zeros((3, 5, 1)), TypeError, r"FusedRSSM.rollout: actions must be a torch.Tensor"),
    ]
    for actions, err, msg in cases:
        with pytest.raises(err, match=msg):
            f.rollout(s, actions)
    with pytest.raises(TypeError, match="FusedRSSM.rollout: state must be a LatentState; got tuple"):
        f.rollout((s.deter, s.stoch), torch.zeros(3, 5, 1))


def test_fused_module_calls_return_the_fused_view():
    m = _model()
    f = FusedRSSM(m)
    assert f.eval() is f and not m.training
    assert f.train() is f and m.training
    assert f.requires_grad_(False) is f and not m.pre_gru.weight.requires_grad
    assert f.to(torch.float64) is f and m.pre_gru.weight.dtype == torch.float64
    s = LatentState(torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    acts = torch.rand(3, 4, 1, dtype=torch.float64)
    got = f.rollout(s, acts, generator=torch.Generator().manual_seed(0))[1]
    want = m.rollout(s, acts, generator=torch.Generator().manual_seed(0))[1]
    assert got.stoch.dtype == torch.float64
    torch.testing.assert_close(got.stoch, want.stoch, rtol=1e-12, atol=1e-12)
    assert f.float() is f and m.pre_gru.weight.dtype == torch.float32


# ---------------------------------------------------------------- observe
def test_observe_checks_is_first_and_ignores_the_actions_of_first_rows():
    m = _model()
    b = 3
    s, a, o = m.initial(b), torch.zeros(b, 1), torch.randn(b, 5)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.observe: is_first must be \[B=3\] bool.*got \[4\]"):
        m.observe(s, a, o, torch.ones(b + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"RSSMWorldModel.observe: is_first must be a bool tensor \[B=3\].*got bool True"):
        m.observe(s, a, o, True)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.observe: is_first must be bool \(or values 0/1\).*0.5"):
        m.observe(s, a, o, torch.full((b,), 0.5))
    with pytest.raises(ValueError, match=r"is_first must be bool \(or values 0/1\).*\[2, 0, 0\]"):
        m.observe(s, a, o, torch.tensor([2, 0, 0]))
    with pytest.raises(TypeError, match=r"RSSMWorldModel.observe: obs must be a torch.Tensor.*got ndarray"):
        m.observe(s, a, o.numpy(), torch.ones(b, dtype=torch.bool))
    # NaN actions (and a NaN belief) on rows that start an episode are ignored, as documented
    first = torch.tensor([True, False, True])
    nan_a = torch.tensor([[math.nan], [0.3], [math.inf]])
    garbage = LatentState(torch.full((b, 8), math.nan), torch.full((b, 4), math.nan))
    garbage = LatentState(torch.where(first[:, None], garbage.deter, 0.0), torch.where(first[:, None], garbage.stoch, 0.0))
    got = m.observe(garbage, nan_a, o, first, sample=False)
    want = m.observe(m.initial(b), torch.tensor([[0.0], [0.3], [0.0]]), o, first, sample=False)
    assert torch.equal(got.deter, want.deter) and torch.equal(got.stoch, want.stoch)
    assert torch.equal(m.observe(s, a, o, torch.tensor([1, 0, 1]), sample=False).deter,
                       m.observe(s, a, o, first, sample=False).deter)
    with pytest.raises(ValueError, match="action contains NaN or inf on a row whose is_first is false"):
        m.observe(s, torch.tensor([[0.0], [math.nan], [0.0]]), o, first)
    # other shapes with one flag per row, and 0/1 floats, are the same flags (as before the checks)
    for same in (first[:, None], first.double()):
        assert torch.equal(m.observe(s, a, o, same, sample=False).deter, m.observe(s, a, o, first, sample=False).deter)
    one = m.observe(m.initial(1), a[:1], o[:1], torch.tensor(True), sample=False)  # a 0-dim flag for B = 1
    assert torch.equal(one.deter, m.observe(m.initial(1), a[:1], o[:1], first[:1], sample=False).deter)


def test_initial_and_misc_named_errors():
    m = _model()
    with pytest.raises(ValueError, match="RSSMWorldModel.initial: batch must be an int >= 0; got -1"):
        m.initial(-1)
    with pytest.raises(TypeError, match="RSSMWorldModel.initial: batch must be an int >= 0; got float 2.0"):
        m.initial(2.0)
    assert m.initial(np.int64(2)).batch == 2
    with pytest.raises(ValueError, match="decode_image_uint8: this model decodes state vectors"):
        m.decode_image_uint8(m.initial(1))
    mp = _model(probe_dim=2)
    with pytest.raises(ValueError, match="fit_probes: batch_size must be an int >= 1; got 0"):
        mp.fit_probes(torch.randn(10, 12), torch.randn(10, 2), steps=2, batch_size=0)
    with pytest.raises(ValueError, match=r"fit_probes: features and targets have no rows \(N = 0\)"):
        mp.fit_probes(torch.randn(0, 12), torch.randn(0, 2), steps=2)
    a = _analytic()
    with pytest.raises(ValueError, match="AnalyticModel.initial: batch must be an int >= 0; got -1"):
        a.initial(-1)
    with pytest.raises(ValueError, match="AnalyticModel: action_low / action_high must not hold NaN"):
        AnalyticModel(lambda x, u: x, lambda x: x.sum(-1), 1, [math.nan], [1.0])
    with pytest.raises(ValueError, match="AnalyticModel: state_dim must be an int >= 0; got -1"):
        AnalyticModel(lambda x, u: x, lambda x: x.sum(-1), -1, [-1.0], [1.0])
    with pytest.raises(ValueError, match=r"AnalyticModel.linear: B must be \[n, m\]"):
        AnalyticModel.linear(np.eye(2), np.array([0.0, 0.1]), np.eye(2))


# ---------------------------------------------------------------- ReplayBuffer
def _episode(t: int, start: float = 0.0, *, obs_dim: int = 2, extra: bool = False) -> dict:
    ep = {
        "obs": (start + np.arange(t + 1, dtype=np.float32))[:, None].repeat(obs_dim, 1),
        "action": np.zeros((t + 1, 1), np.float32),
        "reward": np.arange(t + 1, dtype=np.float32),
        "is_first": np.arange(t + 1) == 0,
    }
    if extra:
        ep["state"] = np.zeros((t + 1, 3), np.float32)
    return ep


def test_replay_folder_is_append_only(tmp_path):
    d = tmp_path / "eps"
    first = ReplayBuffer(d)
    first.add(_episode(4, 0.0))
    first.add(_episode(4, 10.0))
    fresh = ReplayBuffer(d)  # a new buffer on a used folder: numbers after the existing files
    fresh.add(_episode(4, 99.0))
    assert sorted(p.name for p in d.iterdir()) == ["000000.npz", "000001.npz", "000002.npz"]
    everything = ReplayBuffer(d)
    everything.load_directory()
    assert [float(e["obs"][0, 0]) for e in everything.episodes] == [0.0, 10.0, 99.0]
    with pytest.raises(ValueError, match="ReplayBuffer.load_directory: count must be None or an int >= 0; got -1"):
        ReplayBuffer(d).load_directory(-1)
    assert len(list(d.glob("*.npz"))) == 3  # nothing deleted
    resumed = ReplayBuffer(d)
    resumed.load_directory(1)  # a resumed run: files past the checkpoint's count go, numbering continues there
    resumed.add(_episode(4, 7.0))
    assert sorted(p.name for p in d.iterdir()) == ["000000.npz", "000001.npz"]
    again = ReplayBuffer(d)
    again.load_directory()
    assert [float(e["obs"][0, 0]) for e in again.episodes] == [0.0, 7.0]


def test_replay_episodes_must_share_the_first_layout():
    buf = ReplayBuffer()
    buf.add(_episode(3))
    with pytest.raises(ValueError, match=r"ReplayBuffer: episode 1 has keys .* \(extra \['state'\]\)"):
        buf.add(_episode(5, extra=True))
    with pytest.raises(ValueError, match=r"ReplayBuffer: episode 1 'obs' is \[T\+1, 3\].*have \[T\+1, 2\]"):
        buf.add(_episode(5, obs_dim=3))
    wide = _episode(5)
    wide["action"] = np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match=r"ReplayBuffer: episode 1 'action' is \[T\+1, 2\]"):
        buf.add(wide)
    flat = _episode(5)
    flat["action"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"ReplayBuffer: episode 'action' must be \[T\+1, A\]; got shape \[6\]"):
        buf.add(flat)
    two = _episode(5)
    two["reward"] = np.zeros((6, 2), np.float32)
    with pytest.raises(ValueError, match=r"ReplayBuffer: episode 'reward' must be \[T\+1\]; got shape \[6, 2\]"):
        buf.add(two)
    for rows in ([], [0, 3]):
        bad = _episode(5)
        bad["is_first"] = np.isin(np.arange(6), rows)
        with pytest.raises(ValueError, match="'is_first' must be true at row 0 and false elsewhere.*rows " + re.escape(str(rows))):
            buf.add(bad)
    assert len(buf) == 1
    buf.add(_episode(8, 50.0))
    assert len(buf) == 2 and sorted(buf.sample(4, 3)) == ["action", "is_first", "obs", "reward"]


@pytest.mark.parametrize("batch_size, chunk_length, name", [
    (0, 4, "batch_size"), (-1, 4, "batch_size"), (2.0, 4, "batch_size"), (2, 0, "chunk_length"),
    (2, -3, "chunk_length"), (2, 2.5, "chunk_length"),
])
def test_replay_sample_sizes_are_named(batch_size, chunk_length, name):
    buf = ReplayBuffer()
    buf.add(_episode(10))
    with pytest.raises(ValueError, match=rf"ReplayBuffer.sample: {name} must be an int >= 1; got {chunk_length if name == 'chunk_length' else batch_size}"):
        buf.sample(batch_size, chunk_length)


# ---------------------------------------------------------------- PredictorEnsemble
def test_ensemble_inputs_are_named():
    from latentplan.worldmodels import EnsembleConfig, PredictorEnsemble

    with pytest.raises(ValueError, match="EnsembleConfig.lr must be a finite number > 0; got inf"):
        EnsembleConfig(lr=math.inf)
    with pytest.raises(ValueError, match="PredictorEnsemble: in_dim must be an int >= 1; got 2.5"):
        PredictorEnsemble(EnsembleConfig(members=2, hidden=4, layers=1), 2.5, 1)
    with pytest.raises(TypeError, match="PredictorEnsemble: config must be an EnsembleConfig; got dict"):
        PredictorEnsemble({"members": 2}, 2, 1)
    ens = PredictorEnsemble(EnsembleConfig(members=2, hidden=4, layers=1), 2, 1)
    with pytest.raises(ValueError, match=r"PredictorEnsemble: inputs must be float32 as the members' weights; got float64"):
        ens.disagreement(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"PredictorEnsemble: inputs must be float32.*got float64"):
        ens.forward_loop(torch.zeros(3, 2, dtype=torch.float64))
    x = torch.randn(3, 2, dtype=torch.float64)
    ens.double()
    torch.testing.assert_close(ens(x), ens.forward_loop(x))


def test_analytic_from_observation_checks_its_input_and_keeps_the_model_dtype():
    model = AnalyticModel.linear(torch.eye(2, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64), torch.eye(2))
    belief = model.from_observation(torch.tensor([[0.5, -1.0]]))  # float32 in, the model's float64 out
    assert belief.deter.dtype == torch.float64 and belief.deter.tolist() == [[0.5, -1.0]] and belief.stoch.shape == (1, 0)
    for bad, match in ((torch.zeros(1, 3), r"n=2.*\(1, 3\)"), (torch.zeros(2), r"\(2,\)"), (torch.zeros(0, 2), "B >= 1"),
                       (torch.tensor([[float("nan"), 0.0]]), "NaN")):
        with pytest.raises(ValueError, match=match):
            model.from_observation(bad)
    with pytest.raises(TypeError, match="ndarray"):
        model.from_observation(np.zeros((1, 2)))
