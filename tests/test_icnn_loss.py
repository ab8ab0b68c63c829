"""The template filter loss against the paper's equations, its gradients and its preferences."""

from __future__ import annotations

import math

import pytest
import torch

from napari_icnn.errors import ConfigError
from napari_icnn.icnn import RunningLogZ, TemplateBank, template_filter_loss, template_scores, template_shapes


def brute_force_loss(x, positive, n, beta, tau, mode, normalise, log_z):
    """Per-filter loss written straight from Eq. (1)-(2) and Eq. (4)'s T̂, with explicit loops.

    tr(x·T) is the element-wise sum over cells (not a matrix trace).
    """
    b_count, c_count = x.shape[:2]
    xs = x.tolist()
    templates = []
    for i0 in range(n):
        for j0 in range(n):
            templates.append(
                [
                    [tau * max(1 - beta * (abs(i - i0) + abs(j - j0)) / n, -1) for j in range(n)]
                    for i in range(n)
                ]
            )
    templates.append([[-tau] * n for _ in range(n)])
    alpha = n * n / (1 + n * n)
    prior = [alpha / (n * n)] * (n * n) + [1 - alpha]
    losses = []
    for c in range(c_count):
        maps = [xs[b][c] for b in range(b_count)]
        scale = 1.0
        if normalise:
            scale = max(1.0, sum(max(max(row) for row in m) for m in maps) / b_count)
        tr = [
            [sum(maps[b][i][j] / scale * t[i][j] for i in range(n) for j in range(n)) for t in templates]
            for b in range(b_count)
        ]
        if log_z is None:
            z = [sum(math.exp(tr[b][t]) for b in range(b_count)) for t in range(len(templates))]
        else:
            z = [math.exp(v) for v in log_z[c]]
        p = [[math.exp(tr[b][t]) / z[t] for t in range(len(templates))] for b in range(b_count)]
        px = [sum(prior[t] * p[b][t] for t in range(len(templates))) for b in range(b_count)]
        total = 0.0
        if mode == "mi":
            for t in range(len(templates)):
                for b in range(b_count):
                    total += prior[t] * p[b][t] * math.log(p[b][t] / px[b])
        else:
            for b in range(b_count):
                flat = [v for row in maps[b] for v in row]
                peak = flat.index(max(flat))
                t_hat = peak if positive[b][c] else n * n
                total += prior[t_hat] * p[b][t_hat] * math.log(p[b][t_hat] / px[b])
        losses.append(-total)
    return torch.tensor(losses, dtype=torch.float64)


def _maps(b, c, n, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, n, n, generator=g, dtype=torch.float64) * scale
    # post-ReLU maps: some cells exactly zero
    return torch.where(torch.rand(b, c, n, n, generator=g, dtype=torch.float64) < 0.3, 0.0, x)


@pytest.mark.parametrize("shape", [(4, 2, 3), (6, 3, 4), (5, 2, 5)], ids=lambda s: f"B{s[0]}-C{s[1]}-n{s[2]}")
@pytest.mark.parametrize("mode", ["paper", "mi"])
@pytest.mark.parametrize("normalise", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("tau", [None, 0.6], ids=["tau-paper", "tau-0.6"])
@pytest.mark.parametrize("given_z", [False, True], ids=["batch-Z", "given-Z"])
def test_vectorised_loss_equals_the_equations(shape, mode, normalise, tau, given_z):
    b, c, n = shape
    x = _maps(b, c, n, seed=b * 100 + c * 10 + n)
    positive = torch.rand(b, c, generator=torch.Generator().manual_seed(1)) < 0.6
    bank = TemplateBank(n, beta=4.0, tau=tau).double()
    log_z = None
    if given_z:
        log_z = math.log(b) + 0.3 * torch.randn(
            c, n * n + 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
    got = template_filter_loss(
        x, positive, bank, mode=mode, normalise=normalise, log_z=log_z, reduction="none"
    )
    want = brute_force_loss(
        x, positive.tolist(), n, 4.0, bank.tau, mode, normalise, None if log_z is None else log_z.tolist()
    )
    assert got.dtype == torch.float64 and got.shape == (c,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        template_filter_loss(x, positive, bank, mode=mode, normalise=normalise, log_z=log_z),
        want.mean(),
        rtol=1e-9,
        atol=1e-15,
    )
    torch.testing.assert_close(
        template_filter_loss(x, positive, bank, mode=mode, normalise=normalise, log_z=log_z, reduction="sum"),
        want.sum(),
        rtol=1e-9,
        atol=1e-15,
    )


def test_channels_last_and_float32_agree_with_float64():
    x = _maps(6, 4, 8, seed=7)
    positive = torch.rand(6, 4, generator=torch.Generator().manual_seed(3)) < 0.5
    bank64 = TemplateBank(8).double()
    ref = template_filter_loss(x, positive, bank64, reduction="none")
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    got = template_filter_loss(x32, positive, TemplateBank(8), reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mode", ["paper", "mi"])
@pytest.mark.parametrize("given_z", [False, True], ids=["batch-Z", "given-Z"])
def test_gradcheck(mode, given_z):
    g = torch.Generator().manual_seed(5)
    # distinct, well-separated values: the argmax must not flip inside the finite-difference step
    x = (torch.randperm(3 * 2 * 9, generator=g).double().view(3, 2, 3, 3) / 54 + 0.05).requires_grad_()
    positive = torch.tensor([[True, False], [False, True], [True, True]])
    bank = TemplateBank(3, tau=0.5).double()
    log_z = torch.randn(2, 10, generator=g, dtype=torch.float64) if given_z else None

    def f(maps):
        return template_filter_loss(maps, positive, bank, mode=mode, normalise=False, log_z=log_z)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    # max < 1, so the detached normalisation scale is exactly 1 and the gradient is the same
    assert torch.autograd.gradcheck(
        lambda maps: template_filter_loss(maps, positive, bank, mode=mode, normalise=True, log_z=log_z),
        (x,),
        eps=1e-6,
        atol=1e-8,
        rtol=1e-6,
    )


def _diamonds(n, cells, height=3.0):
    shapes = template_shapes(n, dtype=torch.float64).clamp(min=0)
    return torch.stack([shapes[k].view(n, n) for k in cells]) * height


@pytest.mark.parametrize("mode", ["paper", "mi"])
@pytest.mark.parametrize("normalise", [True, False], ids=["norm", "raw"])
def test_template_shaped_maps_beat_scattered_maps(mode, normalise):
    n, b = 8, 6
    g = torch.Generator().manual_seed(11)
    fitted = _diamonds(n, torch.randperm(n * n, generator=g)[:b].tolist())
    scattered = torch.rand(b, n, n, generator=g, dtype=torch.float64)
    scattered *= fitted.sum(dim=(1, 2), keepdim=True) / scattered.sum(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(scattered.sum(dim=(1, 2)), fitted.sum(dim=(1, 2)))
    bank = TemplateBank(n).double()
    loss_fit = template_filter_loss(fitted[:, None], None, bank, mode=mode, normalise=normalise)
    loss_scattered = template_filter_loss(scattered[:, None], None, bank, mode=mode, normalise=normalise)
    assert loss_fit < loss_scattered


@pytest.mark.parametrize("normalise", [True, False], ids=["norm", "raw"])
def test_silent_negatives_beat_active_negatives(normalise):
    n = 8
    maps = _diamonds(n, [3, 20, 45, 9, 30, 60])
    positive = torch.tensor([True, True, True, False, False, False])[:, None]
    silent = maps.clone()
    silent[3:] = 0
    bank = TemplateBank(n).double()
    loss_silent = template_filter_loss(silent[:, None], positive, bank, normalise=normalise)
    loss_active = template_filter_loss(maps[:, None], positive, bank, normalise=normalise)
    assert loss_silent < loss_active


def test_label_free_mode_ignores_labels_and_paper_mode_does_not():
    x = _maps(5, 3, 4, seed=21)
    bank = TemplateBank(4, tau=0.5).double()
    all_pos = torch.ones(5, 3, dtype=torch.bool)
    some_neg = all_pos.clone()
    some_neg[1:3, 0] = False
    assert template_filter_loss(x, all_pos, bank, mode="mi") == template_filter_loss(
        x, some_neg, bank, mode="mi"
    )
    assert template_filter_loss(x, None, bank) == template_filter_loss(x, all_pos, bank)
    assert template_filter_loss(x, all_pos, bank) != template_filter_loss(x, some_neg, bank)


def test_explicit_peak_index_selects_the_template():
    x = _maps(4, 2, 4, seed=4)
    bank = TemplateBank(4, tau=0.5).double()
    argmax = x.flatten(2).argmax(-1)
    same = template_filter_loss(x, None, bank, mu=argmax)
    assert same == template_filter_loss(x, None, bank)
    assert template_filter_loss(x, None, bank, mu=(argmax + 5) % 16) != same


@pytest.mark.parametrize("given_z", [False, True], ids=["batch-Z", "constant-Z"])
def test_several_part_locations_are_fitted_to_one_template_on_all_of_them(given_z):
    """Maps with two parts: the template on both rewards the second part more than the paper's one-part template
    does, which (with Z a constant, as the running estimate is) penalises it; a set of one location is the
    paper's loss."""
    from napari_icnn.icnn.masked import locate_peak_sets

    n, b = 12, 5
    g = torch.Generator().manual_seed(3)
    first = torch.randint(0, 4, (b, 2), generator=g)  # top-left corner
    second = torch.randint(8, 12, (b, 2), generator=g)  # bottom-right corner: far outside the first diamond
    cells = lambda rc: (rc[:, 0] * n + rc[:, 1]).tolist()  # noqa: E731
    x = (_diamonds(n, cells(first), 3.0) + _diamonds(n, cells(second), 2.0))[:, None].requires_grad_(True)
    bank = TemplateBank(n).double()
    log_z = torch.logsumexp(template_scores(x.detach(), bank), dim=0) if given_z else None
    mu = x.detach().flatten(2).argmax(-1)
    sets = locate_peak_sets(x.detach(), mu, 3, n, bank.beta, ratio=0.5)
    assert (sets[..., 1] >= 0).all() and (sets[..., 2] < 0).all()  # two parts found, no third

    one = torch.where(torch.arange(3) == 0, sets, -1)
    torch.testing.assert_close(template_filter_loss(x, None, bank, log_z=log_z, peaks=one),
                               template_filter_loss(x, None, bank, log_z=log_z))
    grads = {}
    for name, peaks in (("paper", None), ("several", sets)):
        x.grad = None
        template_filter_loss(x, None, bank, log_z=log_z, peaks=peaks).backward()
        grads[name] = x.grad[torch.arange(b), 0, second[:, 0], second[:, 1]].clone()
    assert (grads["several"] < grads["paper"]).all()
    if given_z:
        assert (grads["paper"] > 0).all()  # more activation at the second part raises the paper's loss
        assert (grads["several"] < 0).all()  # and lowers the loss that fits both parts
    negative = torch.zeros(b, 1, dtype=torch.bool)  # images without the filter's category fit T⁻ either way
    torch.testing.assert_close(template_filter_loss(x, negative, bank, log_z=log_z, peaks=sets),
                               template_filter_loss(x, negative, bank, log_z=log_z))
    with pytest.raises(ValueError, match="peaks"):
        template_filter_loss(x, None, bank, peaks=sets[:2])


def test_loss_is_float32_under_bf16_autocast():
    x = _maps(4, 3, 6, seed=9).float()
    bank = TemplateBank(6)
    ref = template_filter_loss(x, None, bank)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = template_filter_loss(x.bfloat16(), None, bank)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=1e-6)


def test_running_log_z_tracks_an_ema_of_z_and_feeds_the_loss():
    n, c, b = 4, 3, 5
    bank = TemplateBank(n, tau=0.5).double()
    running = RunningLogZ(c, bank.n_templates, momentum=0.75).double()
    x1, x2 = _maps(b, c, n, seed=31), _maps(b, c, n, seed=32)

    def batch_log_mean_z(x):
        s = (x.flatten(2) @ bank.templates.T).double()
        return torch.logsumexp(s, dim=0) - math.log(b)

    first = template_filter_loss(x1, None, bank, normalise=False, log_z=running)
    torch.testing.assert_close(running.log_mean_z, batch_log_mean_z(x1))
    # the first batch's own Z, now as a constant: same value as the batch-Z loss
    torch.testing.assert_close(first, template_filter_loss(x1, None, bank, normalise=False))

    second = template_filter_loss(x2, None, bank, normalise=False, log_z=running)
    want = torch.log(0.75 * batch_log_mean_z(x1).exp() + 0.25 * batch_log_mean_z(x2).exp())
    torch.testing.assert_close(running.log_mean_z, want)
    torch.testing.assert_close(
        second, template_filter_loss(x2, None, bank, normalise=False, log_z=want + math.log(b))
    )

    running.eval()
    before = running.log_mean_z.clone()
    template_filter_loss(x1, None, bank, normalise=False, log_z=running)
    assert torch.equal(running.log_mean_z, before)

    restored = RunningLogZ(c, bank.n_templates).double()
    restored.load_state_dict(running.state_dict())
    assert bool(restored.initialised) and torch.equal(restored.log_mean_z, running.log_mean_z)


def test_running_log_z_is_a_constant_for_backprop():
    x = _maps(4, 2, 4, seed=41).requires_grad_()
    bank = TemplateBank(4, tau=0.5).double()
    running = RunningLogZ(2, bank.n_templates).double()
    template_filter_loss(x, None, bank, log_z=running).backward()
    assert x.grad is not None and running.log_mean_z.grad is None and not running.log_mean_z.requires_grad


def test_bad_arguments_are_named():
    bank = TemplateBank(4)
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ConfigError, match="mode"):
        template_filter_loss(x, None, bank, mode="entropy")
    with pytest.raises(ConfigError, match="reduction"):
        template_filter_loss(x, None, bank, reduction="max")
    with pytest.raises(ValueError, match=r"\(B, C, 4, 4\)"):
        template_filter_loss(torch.rand(2, 3, 5, 5), None, bank)
    with pytest.raises(ValueError, match="positive"):
        template_filter_loss(x, torch.ones(2, 2, dtype=torch.bool), bank)
    with pytest.raises(ValueError, match="log_z"):
        template_filter_loss(x, None, bank, log_z=torch.zeros(3, 16))


def test_paper_loss_refuses_a_second_derivative():
    """Its gradient is written out from saved exponentials: a second pass must fail loudly, not be wrong."""
    x = _maps(4, 2, 5, seed=9).requires_grad_()
    loss = template_filter_loss(x, None, TemplateBank(5).double(), mode="paper")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):
        g.sum().backward()
    # also when the seed itself carries a graph (the second pass would reach the written-out gradient)
    weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss, x, grad_outputs=weight, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()
