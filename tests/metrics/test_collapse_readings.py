"""What each spectral metric reads on a collapsing run: the README's "collapsed" column, checked.

Two kinds of collapse look different. Collapse toward a point (SimSiam without stop-gradient, the demo's collapsing
run: mean cosine -> 1) shrinks the spread around the mean but keeps its shape: the centred, scale-free metrics
(effective_rank_centered, spectrum shape, collapsed_dimensions, alpha_req) do not see it, and can even move the
"healthy" way (the jitter left over is whiter than a trained spectrum); uniformity, mean cosine, normalized std
and the uncentred effective rank do. Collapse onto a k-dimensional subspace (dimensional collapse) is what the
centred family measures.
"""
import math

import pytest
import torch

import spherewatch.metrics as M


def _healthy(n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.arange(1, d + 1) ** -0.5  # a trained-looking decaying spectrum


def _toward_a_point(spread, n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centre = torch.nn.functional.normalize(torch.randn(1, d, generator=g), dim=1)
    return centre + spread * torch.randn(n, d, generator=g) / math.sqrt(d)


def _onto_subspace(k, n=2048, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :k]
    return torch.randn(n, k, generator=g) @ basis.T + 1e-5 * torch.randn(n, d, generator=g)


def test_collapse_toward_a_point_is_seen_by_the_uncentred_metrics_only():
    healthy, collapsing = _healthy(), _toward_a_point(0.05)
    # seen: close to complete collapse
    assert M.mean_cosine(collapsing).item() > 0.99 > M.mean_cosine(healthy).item()
    assert M.uniformity(collapsing).item() > -0.02
    assert M.effective_rank(collapsing).item() < 0.25 * M.effective_rank(healthy).item()
    assert M.normalized_std(collapsing).item() < 0.1 * M.normalized_std(healthy).item()
    # not seen: the centred spectrum of isotropic jitter is white, so it reads *healthier* than a trained one
    assert M.collapsed_dimensions(collapsing).item() == 0.0
    assert M.effective_rank(collapsing, center=True).item() > M.effective_rank(healthy, center=True).item()
    assert M.alpha_req(collapsing).alpha.item() < 0.5 * M.alpha_req(healthy).alpha.item()


def test_dimensional_collapse_is_what_the_centred_family_measures():
    d, k = 64, 4
    x = _onto_subspace(k, d=d)
    assert M.collapsed_dimensions(x).item() == d - k
    assert M.effective_rank(x, center=True).item() == pytest.approx(k, rel=0.05)
    assert math.isnan(M.alpha_req(x).alpha.item())  # the 11..100 window (here 6..64) lies past the rank
    # the spread on the sphere is still large: uniformity alone would not call this a collapse onto a point
    assert M.mean_cosine(x).item() < 0.1


def test_demo_collapsing_run_reads_as_documented():
    # the README's "collapsed" column on the demo's own collapsing scenario (SimSiam without stop-gradient)
    from spherewatch.demo import SCENARIOS, Encoder, _loss, augment, make_data

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data, probe = make_data(n=1024, seed=0), make_data(n=512, seed=1000)
    model = Encoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(60):
        x = data[torch.randint(0, 1024, (256,), generator=g)]
        loss = _loss(SCENARIOS["simsiam_no_stopgrad"], model, model(augment(x, g)), model(augment(x, g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = model.eval()(probe)
    assert M.mean_cosine(z).item() > 0.8  # collapsing toward a point
    assert M.collapsed_dimensions(z).item() == 0.0  # ... which the centred spectrum does not count
    assert M.effective_rank(z, center=True).item() > 2 * M.effective_rank(z).item()  # measured 42 vs 15
