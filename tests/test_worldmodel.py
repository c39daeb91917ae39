"""The RSSM world model: shapes, that filtering uses the observation, that the ELBO falls, bad inputs."""

import copy

import numpy as np
import pytest
import torch

from latentplan.worldmodels import LatentState, ReplayBuffer, RSSMConfig, RSSMWorldModel, preprocess_image, postprocess_image

SMALL = dict(deter=32, stoch=8, hidden=32, embed=32)


def _model(obs_dim=4, action_dim=2, **kw) -> RSSMWorldModel:
    torch.manual_seed(0)
    names = (("pos", 0, 2), ("vel", 2, min(4, obs_dim)))  # slices must lie inside the observation
    return RSSMWorldModel(RSSMConfig(obs_shape=(obs_dim,), action_dim=action_dim, obs_names=names, **{**SMALL, **kw}))


def test_planet_default_sizes():
    m = RSSMWorldModel(RSSMConfig(obs_shape=(5,), action_dim=1))
    s = m.initial(3)
    assert s.deter.shape == (3, 200) and s.stoch.shape == (3, 30)
    assert m.gru.hidden_size == 200 and m.config.min_std == 0.1 and m.config.free_nats == 3.0


def test_shapes_of_every_protocol_method():
    m = _model()
    s = m.initial(5)
    a = torch.zeros(5, 2)
    post = m.observe(s, a, torch.randn(5, 4), torch.ones(5, dtype=torch.bool))
    prior = m.imagine_step(post, a, generator=torch.Generator().manual_seed(0))
    for st in (post, prior):
        assert st.deter.shape == (5, 32) and st.stoch.shape == (5, 8)
        assert st.features().shape == (5, 40)
    assert m.reward(prior).shape == (5,)
    dec = m.decode(prior)
    assert dec["obs"].shape == (5, 4) and dec["pos"].shape == (5, 2) and dec["vel"].shape == (5, 2)
    torch.testing.assert_close(dec["vel"], dec["obs"][:, 2:4])
    e = s.expand(3)
    assert e.batch == 15 and torch.equal(e.deter[3:6], s.deter[1:2].expand(3, -1))


def test_observe_uses_the_observation():
    m = _model()
    s = m.initial(1)
    a = torch.zeros(1, 2)
    first = torch.ones(1, dtype=torch.bool)
    p1 = m.observe(s, a, torch.full((1, 4), 1.0), first, sample=False)
    p2 = m.observe(s, a, torch.full((1, 4), -1.0), first, sample=False)
    assert torch.equal(p1.deter, p2.deter)  # the deterministic path does not see o_t
    assert (p1.stoch - p2.stoch).abs().max() > 1e-3  # the posterior does
    # and the posterior mean differs from the prior mean for the same history
    _, prior_mean, _ = m._transition(s, a)
    assert (p1.stoch - prior_mean).abs().max() > 1e-3


def test_is_first_resets_the_belief_and_ignores_the_action():
    m = _model()
    obs = torch.randn(2, 4)
    garbage = LatentState(torch.randn(2, 32) * 5, torch.randn(2, 8) * 5)
    reset = m.observe(garbage, torch.ones(2, 2), obs, torch.ones(2, dtype=torch.bool), sample=False)
    fresh = m.observe(m.initial(2), torch.zeros(2, 2), obs, torch.ones(2, dtype=torch.bool), sample=False)
    torch.testing.assert_close(reset.deter, fresh.deter)
    torch.testing.assert_close(reset.stoch, fresh.stoch)


def _sine_data(b=8, t=20, seed=0):
    g = np.random.default_rng(seed)
    phase = g.uniform(0, 2 * np.pi, size=(b, 1))
    steps = np.arange(t)[None] * 0.3
    obs = np.stack([np.sin(steps + phase), np.cos(steps + phase), np.sin(2 * steps + phase), np.zeros((b, t))], -1)
    action = g.uniform(-1, 1, size=(b, t, 2))
    reward = np.cos(steps + phase) + 0.5 * action[..., 0]
    is_first = np.zeros((b, t), bool)
    is_first[:, 0] = True
    f = lambda x: torch.tensor(x, dtype=torch.float32)
    return f(obs), f(action), f(reward), torch.tensor(is_first)


def test_elbo_falls_on_a_fixed_dataset():
    m = _model(free_nats=0.0)
    obs, action, reward, is_first = _sine_data()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3, eps=1e-4)
    g = torch.Generator().manual_seed(0)
    first = m.elbo(obs, action, reward, is_first, generator=g)
    for _ in range(150):
        terms = m.elbo(obs, action, reward, is_first, generator=g)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    last = m.elbo(obs, action, reward, is_first, generator=torch.Generator().manual_seed(0))
    assert last.loss < 0.3 * first.loss, (first.scalars(), last.scalars())
    assert last.reconstruction < 0.35 * first.reconstruction
    assert last.reward < 0.5 * first.reward
    assert last.posterior.batch == 8 * 20


def test_free_nats_floor_the_kl_term():
    m = _model(free_nats=1e6)
    obs, action, reward, is_first = _sine_data(b=2, t=5)
    t = m.elbo(obs, action, reward, is_first)
    torch.testing.assert_close(t.loss, t.reconstruction + t.reward + 1e6)


def test_bad_inputs_name_what_was_wrong():
    m = _model()
    s = m.initial(2)
    first = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"observation must be \[2, 4\]"):
        m.observe(s, torch.zeros(2, 2), torch.zeros(2, 5), first)
    with pytest.raises(ValueError, match=r"RSSMWorldModel.observe: action must be \[2, 2\] float32 on cpu.*got \[2, 3\]"):
        m.observe(s, torch.zeros(2, 3), torch.zeros(2, 4), first)
    # the prior step checks its inputs too: dtype, size and type, each named
    with pytest.raises(ValueError, match=r"imagine_step: action must be \[2, 2\] float32.*got \[2, 2\] float64"):
        m.imagine_step(s, torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"imagine_step: state.deter must be \[2, 32\].*got \[2, 7\]"):
        m.imagine_step(LatentState(torch.zeros(2, 7), s.stoch), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="imagine_step: state must be a LatentState; got tuple"):
        m.imagine_step((s.deter, s.stoch), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN"):
        m.observe(s, torch.zeros(2, 2), torch.tensor([[0.0, float("nan"), 0, 0]] * 2), first)
    with pytest.raises(ValueError, match="elbo"):
        m.elbo(torch.zeros(2, 3, 4), torch.zeros(2, 3, 1), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"image observations must be \(3, 64, 64\)"):
        RSSMWorldModel(RSSMConfig(obs_shape=(3, 32, 32), action_dim=1))
    with pytest.raises(ValueError, match="action_dim"):
        RSSMWorldModel(RSSMConfig(obs_shape=(4,)))


def test_image_model_shapes_and_five_bit_preprocessing():
    m = RSSMWorldModel(RSSMConfig(obs_shape=(3, 64, 64), action_dim=1, deter=16, stoch=4, hidden=16))
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    s = m.observe(m.initial(2), torch.zeros(2, 1), img, torch.ones(2, dtype=torch.bool))
    assert m.decode(s)["image"].shape == (2, 3, 64, 64)
    assert m.decode_image_uint8(s).dtype == torch.uint8
    x = preprocess_image(img, 5)
    assert x.min() >= -0.5 and x.max() < 0.5
    assert len(torch.unique(x)) <= 32  # five bits
    # quantisation error of the round trip is at most one 5-bit bin (8 grey levels)
    assert (postprocess_image(x + 1 / 64).int() - img.int()).abs().max() <= 8
    with pytest.raises(ValueError, match="uint8"):
        m.observe(m.initial(2), torch.zeros(2, 1), img.float(), torch.ones(2, dtype=torch.bool))


def _episode(t, obs_dim=3, seed=0):
    g = np.random.default_rng(seed)
    return {
        "obs": g.normal(size=(t + 1, obs_dim)).astype(np.float32),
        "action": g.uniform(-1, 1, size=(t + 1, 1)).astype(np.float32),
        "reward": np.r_[0.0, g.normal(size=t)].astype(np.float32),
        "is_first": np.arange(t + 1) == 0,
    }


def test_replay_samples_valid_chunks_and_round_trips(tmp_path):
    buf = ReplayBuffer(tmp_path / "eps", seed=0)
    for i in range(3):
        buf.add(_episode(9 + i, seed=i))
    assert len(buf) == 3 and buf.steps == 9 + 10 + 11
    batch = buf.sample(64, 6)
    assert batch["obs"].shape == (64, 6, 3) and batch["action"].shape == (64, 6, 1)
    # every chunk is a contiguous piece of one stored episode
    stored = [e["obs"] for e in buf.episodes]
    for chunk in batch["obs"].numpy():
        assert any(
            np.array_equal(chunk, ep[o : o + 6]) for ep in stored for o in range(len(ep) - 5)
        )
    assert batch["is_first"][:, 1:].sum() == 0  # only a chunk's first row can start an episode
    again = ReplayBuffer(tmp_path / "eps")
    again.load_directory(2)
    assert len(again) == 2 and np.array_equal(again.episodes[1]["obs"], buf.episodes[1]["obs"])
    assert not (tmp_path / "eps" / "000002.npz").exists()  # past the checkpoint: removed
    with pytest.raises(ValueError, match="no episode has 50 rows"):
        buf.sample(2, 50)


def test_replay_rejects_bad_episodes():
    buf = ReplayBuffer()
    ep = _episode(5)
    ep["reward"] = ep["reward"][:-1]
    with pytest.raises(ValueError, match="rows"):
        buf.add(ep)
    ep = _episode(5)
    ep["obs"][2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 'obs'"):
        buf.add(ep)
    with pytest.raises(ValueError, match="lacks keys"):
        buf.add({"obs": np.zeros((3, 1))})


def test_observation_std_defaults_and_scaling():
    assert RSSMConfig(obs_shape=(5,), action_dim=1).observation_std == 0.1
    assert RSSMConfig(obs_shape=(3, 64, 64), action_dim=1).observation_std == 1.0  # PlaNet's
    obs, action, reward, is_first = _sine_data(b=2, t=5)
    terms = {}
    for std in (1.0, 0.1):
        m = _model(obs_std=std)
        terms[std] = m.elbo(obs, action, reward, is_first, generator=torch.Generator().manual_seed(0))
    # same weights, same samples: the Gaussian NLL scales with 1 / std^2
    torch.testing.assert_close(terms[0.1].reconstruction, 100 * terms[1.0].reconstruction)
    torch.testing.assert_close(terms[0.1].kl, terms[1.0].kl)


def _bar_images(x: torch.Tensor) -> torch.Tensor:
    """`[N]` positions in [-1, 1] -> `[N, 3, 64, 64]` uint8 frames with a white bar at that column."""
    col = ((x + 1) / 2 * 55).round().long()
    img = torch.zeros(x.shape[0], 3, 64, 64, dtype=torch.uint8)
    for i, c in enumerate(col.tolist()):
        img[i, :, 20:44, c : c + 8] = 255
    return img


def _probe_model(detach: bool) -> RSSMWorldModel:
    torch.manual_seed(0)
    cfg = RSSMConfig(obs_shape=(3, 64, 64), action_dim=1, deter=16, stoch=4, hidden=32, probe_dim=2,
                     probe_names=(("x", 0, 1), ("x2", 1, 2)), probe_detach=detach)
    return RSSMWorldModel(cfg)


def test_probe_heads_learn_the_hidden_state_and_decode_it_by_name():
    """Probe heads learn a physical state the observation shows only through a nonlinear view
    (obs = [cos x, sin x], target x), and `decode` serves them by name."""
    torch.manual_seed(0)
    m = RSSMWorldModel(RSSMConfig(obs_shape=(2,), action_dim=1, probe_dim=1, probe_names=(("x", 0, 1),), **SMALL))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def batch(n=16, t=4):
        x = torch.rand(n, t, 1, generator=g) * 2 - 1
        obs = torch.cat([torch.cos(2 * x), torch.sin(2 * x)], -1)
        return obs, torch.zeros(n, t, 1), torch.zeros(n, t), torch.zeros(n, t, dtype=torch.bool), x

    *held, x_held = batch(64, 1)
    before = float(m.elbo(*held, state=x_held, generator=g).probe)
    for _ in range(150):
        *inputs, targets = batch()
        terms = m.elbo(*inputs, state=targets, generator=g)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    with torch.no_grad():
        after = m.elbo(*held, state=x_held, generator=g)
        post = m.observe(m.initial(64), held[1][:, 0], held[0][:, 0], torch.ones(64, dtype=torch.bool), sample=False)
        decoded = m.decode(post)
    assert float(after.probe) < 0.1 * before and "probe_nll" in after.scalars()
    assert set(decoded) == {"obs", "state", "x"} and decoded["x"].shape == (64, 1)
    # a constant guess has mean error 0.5 on U(-1, 1)
    assert (decoded["x"] - x_held[:, 0]).abs().mean() < 0.1


def test_image_models_decode_probe_quantities_without_the_image_decoder():
    m = _probe_model(detach=True)
    s = m.observe(m.initial(3), torch.zeros(3, 1), _bar_images(torch.zeros(3)), torch.ones(3, dtype=torch.bool))
    decoded = m.decode(s)
    assert decoded["x"].shape == (3, 1) and decoded["x2"].shape == (3, 1)
    assert "image" not in decoded._items  # not computed until looked up
    assert decoded["image"].shape == (3, 3, 64, 64) and set(decoded) == {"image", "state", "x", "x2"}


def test_detached_probes_leave_the_world_model_gradients_alone():
    """With `probe_detach=True` the probe targets cannot change the world model's gradients."""
    obs = _bar_images(torch.linspace(-1, 1, 8)).unflatten(0, (4, 2))
    args = (obs, torch.zeros(4, 2, 1), torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.bool))

    def encoder_grad(detach: bool, targets: torch.Tensor) -> torch.Tensor:
        m = _probe_model(detach)
        m.elbo(*args, state=targets, generator=torch.Generator().manual_seed(1)).loss.backward()
        return torch.cat([p.grad.flatten() for p in m.encoder.parameters()])

    zeros, ones = torch.zeros(4, 2, 2), torch.ones(4, 2, 2)
    assert torch.equal(encoder_grad(True, zeros), encoder_grad(True, ones))
    assert not torch.allclose(encoder_grad(False, zeros), encoder_grad(False, ones))
    m = _probe_model(True)
    with pytest.raises(ValueError, match="probe_dim=2"):
        m.elbo(*args)
    with pytest.raises(ValueError, match="NaN"):
        m.elbo(*args, state=torch.full((4, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="no probe heads"):
        RSSMWorldModel(RSSMConfig(obs_shape=(3, 64, 64), action_dim=1, deter=8, stoch=2, hidden=8)).probe(m.initial(1))
    with pytest.raises(ValueError, match="already name decoded"):
        RSSMConfig(obs_shape=(4,), action_dim=1, obs_names=(("x", 0, 1),), probe_dim=1, probe_names=(("x", 0, 1),)).validate()
    with pytest.raises(ValueError, match="outside the probe state"):
        RSSMConfig(obs_shape=(3, 64, 64), action_dim=1, probe_dim=2, probe_names=(("x", 1, 3),)).validate()


def test_fit_probes_trains_only_the_probe_heads():
    """Offline probe fitting on fixed features: the probe learns a linear readout exactly enough,
    and no world-model parameter changes."""
    torch.manual_seed(0)
    m = RSSMWorldModel(RSSMConfig(obs_shape=(2,), action_dim=1, probe_dim=2, probe_names=(("a", 0, 1),), **SMALL))
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(512, 40, generator=g)
    targets = feats[:, :2] @ torch.tensor([[1.0, -0.5], [0.5, 2.0]])
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("probe_head")}
    losses = m.fit_probes(feats, targets, steps=400, generator=g)
    assert losses[-1] < 0.02 * losses[0]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"features \[N, 40\]"):
        m.fit_probes(feats[:, :10], targets)
    with pytest.raises(ValueError, match="NaN"):
        m.fit_probes(feats, targets * float("nan"))


# --------------------------------------------------------------------------- the protocol's base class


def test_every_model_conforms_and_the_base_rollout_is_imagine_step_repeated():
    from latentplan.worldmodels import AnalyticModel, FusedRSSM, WorldModel

    m = _model(obs_dim=4, action_dim=2, deter=6, stoch=3, hidden=8, embed=8)
    analytic = AnalyticModel(lambda x, u: x + u, lambda x: -x.sum(-1), 2, [-1.0, -1.0], [1.0, 1.0])
    fused = FusedRSSM(m)
    for model, f in ((m, 9), (analytic, 2), (fused, 9)):
        assert isinstance(model, WorldModel) and model.feature_size == f
        assert model.initial(3).features().shape == (3, f)
    assert not m.refresh() and not analytic.refresh()  # nothing derived to rebuild
    # the default rollout draws the same numbers in the same order as H imagine_steps
    state = m.initial(2)
    actions = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(0))
    visited, final = m.rollout(state, actions, generator=torch.Generator().manual_seed(1))
    g, s, rows = torch.Generator().manual_seed(1), state, []
    for t in range(4):
        s = m.imagine_step(s, actions[:, t], generator=g)
        rows.append(s.deter)
    assert torch.equal(final.deter, s.deter) and torch.equal(final.stoch, s.stoch)
    assert torch.equal(visited.deter.reshape(2, 4, -1), torch.stack(rows, 1))
    # sample=False is the prior mean: independent of the generator
    a = m.rollout(state, actions, generator=torch.Generator().manual_seed(1), sample=False)[1]
    b = m.rollout(state, actions, generator=torch.Generator().manual_seed(2), sample=False)[1]
    assert torch.equal(a.stoch, b.stoch)
    # the analytic model's rollout is its dynamics applied H times
    x0 = analytic.from_observation(torch.tensor([[0.5, -0.5]]))
    visited, final = analytic.rollout(x0, torch.full((1, 3, 2), 0.25))
    torch.testing.assert_close(visited.deter, torch.tensor([[0.75, -0.25], [1.0, 0.0], [1.25, 0.25]]))


def test_filter_episodes_keeps_episode_order_and_the_draws_of_each_group():
    from latentplan.distillation import replay_beliefs
    from latentplan.worldmodels import filter_episodes

    m = _model(obs_dim=3, action_dim=1, deter=6, stoch=3, hidden=8, embed=8)
    eps = [_episode(5, seed=0), _episode(3, seed=1), _episode(5, seed=2)]
    beliefs, index = filter_episodes(m, eps, generator=torch.Generator().manual_seed(0))
    assert beliefs.batch == 6 + 4 + 6 and index.tolist() == [0] * 6 + [1] * 4 + [2] * 6
    # episode 1 alone, with the generator state it had after the length-6 group (6 draws of [2, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        torch.randn(2, 3, generator=g)
    alone, _ = filter_episodes(m, [eps[1]], generator=g)
    torch.testing.assert_close(alone.deter, beliefs.deter[6:10])
    torch.testing.assert_close(alone.stoch, beliefs.stoch[6:10])
    # without the last belief each episode gives T rows
    short, short_index = filter_episodes(m, eps, include_last=False, generator=torch.Generator().manual_seed(0))
    assert short.batch == 5 + 3 + 5 and short_index.tolist() == [0] * 5 + [1] * 3 + [2] * 5
    # replay_beliefs keeps its order: grouped by episode length, as the filtering runs
    grouped = replay_beliefs(m, eps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grouped.deter[:5], short.deter[:5])
    torch.testing.assert_close(grouped.deter[5:10], short.deter[8:13])
    torch.testing.assert_close(grouped.deter[10:], short.deter[5:8])
    # a float64 model filters in float64 (the stored float32 actions follow the model's dtype); the
    # first belief of an episode is deterministic (a reset), so it equals the float32 model's
    m64 = copy.deepcopy(m).double()
    beliefs64, _ = filter_episodes(m64, eps, generator=torch.Generator().manual_seed(0))
    assert beliefs64.deter.dtype == torch.float64 and beliefs64.stoch.dtype == torch.float64
    torch.testing.assert_close(beliefs64.deter[[0, 6, 10]], beliefs.deter[[0, 6, 10]].double(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"filter_episodes: episode 0 lacks \['is_first'\]"):
        filter_episodes(m, [{"obs": np.zeros((2, 3)), "action": np.zeros((2, 1))}])
