"""The posterior recursion's hand-written backward through time (`PosteriorFilter`) gives autograd's
numbers: the beliefs, and the gradients of every input and weight, with episode resets inside a
chunk, with unused outputs, and inside the whole ELBO."""

import dataclasses

import pytest
import torch

import latentplan as lp
from latentplan.worldmodels.filter_bptt import PosteriorFilter


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(lp.RSSMConfig(deter=9, stoch=4, hidden=7, embed=6), obs_shape=(3,), action_dim=2)
    return lp.RSSMWorldModel(cfg).to(dtype)


def _inputs(b=3, t=7, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(b, t, 6, generator=g, dtype=dtype).requires_grad_()
    action = torch.randn(b, t, 2, generator=g, dtype=dtype).requires_grad_()
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True  # an episode starts inside the chunk: belief and action reset there
    is_first[2, 5] = True
    eps = torch.randn(t, b, 4, generator=g, dtype=dtype)
    return embed, action, is_first, eps


def _filter_with_grads(model, manual, inputs, upstream, used=(0, 1, 2, 3)):
    model.manual_bptt = manual
    model.zero_grad(set_to_none=True)
    embed, action, is_first, eps = inputs
    embed.grad = action.grad = None
    outs = model._filter(embed, action, is_first, eps)
    sum((outs[i] * upstream[i]).sum() for i in used).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, embed.grad.clone(), action.grad.clone()


@pytest.mark.parametrize("used", [(0, 1, 2, 3), (0,), (1, 3)])
def test_the_hand_written_backward_equals_autograd(used):
    model = _model()
    inputs = _inputs()
    g = torch.Generator().manual_seed(2)
    upstream = [torch.randn(21, n, generator=g, dtype=torch.float64) for n in (9, 4, 4, 4)]
    outs, grads, d_embed, d_action = _filter_with_grads(model, True, inputs, upstream, used)
    ref_outs, ref_grads, ref_embed, ref_action = _filter_with_grads(model, False, inputs, upstream, used)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert set(grads) == set(ref_grads)  # the same parameters receive gradients
    assert {"gru.weight_ih", "gru.weight_hh", "post_out.bias", "pre_gru.weight", "post_hidden.weight"} <= set(grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(d_embed, ref_embed, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(d_action, ref_action, atol=1e-12, rtol=1e-10)
    # the reset matters: the gradient of the action that starts an episode is zero (it is masked)
    assert float(d_action[1, 3].abs().max()) == 0.0
    assert float(ref_action[1, 2].abs().max()) > 0.0


def test_the_posterior_filter_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    b, t, d, s, hd = 2, 4, 5, 3, 4

    def rand(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    keep = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)[..., None]
    keep[:, 0] = 0.0
    eps = torch.randn(t, b, s, generator=g, dtype=torch.float64)
    args = (rand(b, t, hd), rand(b, t, hd), keep, eps, rand(hd, s), rand(3 * d, hd), rand(3 * d), rand(3 * d, d),
            rand(3 * d), rand(hd, d), rand(2 * s, hd), rand(2 * s))
    assert torch.autograd.gradcheck(lambda *a: PosteriorFilter.apply(*a, 0.1), args)


def test_the_elbo_and_its_gradients_do_not_depend_on_the_backward_used():
    model = _model(3, dtype=torch.float32).train()
    g = torch.Generator().manual_seed(4)
    b, t = 4, 9
    batch = (torch.randn(b, t, 3, generator=g), torch.rand(b, t, 2, generator=g) * 2 - 1, torch.randn(b, t, generator=g))
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, 4] = True
    out = {}
    for manual in (True, False):
        model.manual_bptt = manual
        model.zero_grad(set_to_none=True)
        terms = model.elbo(*batch, is_first, generator=torch.Generator().manual_seed(5))
        terms.loss.backward()
        out[manual] = (terms, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (a, ga), (r, gr) = out[True], out[False]
    torch.testing.assert_close(a.loss, r.loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(a.kl, r.kl, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.posterior.deter, r.posterior.deter, atol=1e-6, rtol=1e-6)
    assert set(ga) == set(gr)
    for name in gr:
        torch.testing.assert_close(ga[name], gr[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_manual_backward_is_the_default_and_can_be_switched_off():
    model = _model()
    assert model.manual_bptt is True
    inputs = _inputs()

    def node_names(tensor, depth=2):  # the autograd nodes just below the output (a flatten view first)
        names, frontier = set(), [tensor.grad_fn]
        for _ in range(depth):
            frontier = [f for node in frontier if node is not None for f, _ in node.next_functions]
            names |= {type(f).__name__ for f in frontier if f is not None}
        return names

    model.manual_bptt = True
    assert any("PosteriorFilter" in n for n in node_names(model._filter(*inputs)[0]))
    model.manual_bptt = False
    names = node_names(model._filter(*inputs)[0])
    assert not any("PosteriorFilter" in n for n in names) and names  # the recorded loop instead
