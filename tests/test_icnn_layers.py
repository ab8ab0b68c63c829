"""Templates, the interpretable mask, filter assignment, and a filter learning to localise a part."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from napari_icnn.errors import ConfigError
from napari_icnn.icnn import (
    FilterAssignment,
    InterpretableMask,
    TemplateBank,
    locate_peak_sets,
    locate_peaks,
    template_filter_loss,
    template_shapes,
)
from napari_icnn.icnn.templates import _X86, SCORE_METHODS, cone_radius

# --- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, beta", [(5, 4.0), (7, 2.5), (14, 4.0)])
def test_template_shapes_follow_the_formula(n, beta):
    shapes = template_shapes(n, beta, dtype=torch.float64)
    assert shapes.shape == (n * n, n * n)
    for i0, j0 in [(0, 0), (n // 2, n // 3), (n - 1, n - 1), (1, n - 2)]:
        row = shapes[i0 * n + j0].view(n, n)
        for i, j in [(i0, j0), (0, 0), (n - 1, 0), (n // 2, n // 2), (i0, n - 1)]:
            want = max(1 - beta * (abs(i - i0) + abs(j - j0)) / n, -1)
            assert row[i, j].item() == pytest.approx(want, abs=1e-15)
        assert row.max() == 1.0 and row[i0, j0] == 1.0
    assert shapes.min() >= -1.0
    torch.testing.assert_close(shapes, shapes.T)  # L1 distance is symmetric


def test_template_bank_scale_negative_template_and_priors():
    n = 6
    bank = TemplateBank(n).double()
    assert bank.tau == pytest.approx(0.5 / n**2)
    assert bank.templates.shape == (n * n + 1, n * n) and bank.n_templates == n * n + 1
    torch.testing.assert_close(bank.templates[:-1], bank.tau * template_shapes(n, dtype=torch.float64))
    assert torch.all(bank.templates[bank.negative] == -bank.tau)
    prior = bank.log_prior.exp()
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(prior, torch.full_like(prior, 1 / (1 + n * n)))
    # derived buffers stay out of checkpoints and follow dtype changes exactly
    assert bank.state_dict() == {}
    assert TemplateBank(n, tau=0.3).double().templates[0, 1].item() == 0.3 * (1 - 4 / n)
    built_in_float32 = TemplateBank(n, tau=0.3)
    assert built_in_float32.templates.dtype == torch.float32
    assert built_in_float32.double().templates[0, 1].item() == 0.3 * (1 - 4 / n)  # rebuilt, not cast
    assert TemplateBank(n).bfloat16().templates.dtype == torch.float32


@pytest.mark.parametrize("n, beta", [(1, 3.3), (2, 3.3), (3, 3.3), (6, 3.3), (7, 3.3), (32, 3.3), (7, 12.0),
                                     (13, 30.0), (32, 12.0)])
def test_every_score_method_equals_the_full_template_product(n, beta):
    bank = TemplateBank(n, beta=beta).double()
    g = torch.Generator().manual_seed(n)
    x = torch.rand(3, 5, n, n, generator=g, dtype=torch.float64)
    want = torch.tensor(
        [[[sum(x[b, c, i, j].item() * bank.templates[t, i * n + j].item() for i in range(n) for j in range(n))
           for t in range(n * n + 1)] for c in range(5)] for b in range(3)],
        dtype=torch.float64,
    ) if n < 8 else x.flatten(2) @ bank.templates.T  # fmt: skip
    upstream = torch.randn(3, 5, n * n + 1, generator=g, dtype=torch.float64)
    for method in SCORE_METHODS:
        got = bank.scores(x, method=method)
        assert got.shape == (3, 5, n * n + 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(bank.scores(x.contiguous(memory_format=torch.channels_last), method), want)
        # the gradient is the adjoint product, as for the full matrix
        xg = x.clone().requires_grad_()
        bank.scores(xg, method=method).backward(upstream)
        torch.testing.assert_close(xg.grad.flatten(2), upstream @ bank.templates, rtol=1e-12, atol=1e-14)
    assert torch.equal(bank.scores(x), bank.scores(x, method="folded"))  # the CPU default in float64


def test_score_method_follows_device_dtype_and_cone_width():
    bank = TemplateBank(32, beta=12.0)  # a cone of radius 5: 11 x 11 of a 32 x 32 map
    x = torch.rand(2, 3, 32, 32)
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and _X86
    assert bank.method_for(x) == ("conv" if onednn else "folded")
    assert bank.method_for(x.double()) == "folded"
    with torch.backends.mkldnn.flags(enabled=False):
        assert bank.method_for(x) == "folded"
    assert TemplateBank(32, beta=4.0).method_for(x) == "folded"  # radius 15: the cone covers the map
    assert bank.method_for(torch.empty(2, 3, 32, 32, device="meta")) == "dense"
    # float32 results of the three methods agree to float32 rounding
    want = bank.scores(x.double(), method="dense")
    for method in SCORE_METHODS:
        torch.testing.assert_close(bank.scores(x, method=method).double(), want, rtol=1e-5, atol=1e-6)
    for bad in ("fft", True, False):  # the former ``blockwise`` flag is refused, not taken for a default
        with pytest.raises(ConfigError, match="score method"):
            bank.scores(x, bad)
    # under autocast the correlation keeps the maps' precision, forward and backward
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bank.scores(xg, method="conv")
    assert got.dtype == torch.float32
    got.sum().backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_bank_builds_only_what_its_method_needs():
    bank = TemplateBank(32, beta=12.0)
    bank.scores(torch.rand(2, 3, 32, 32, requires_grad=True), method="conv").sum().backward()
    # the correlation needs one 11 x 11 cone, not the (n², n²) matrices (4 MB each here)
    built = {name for name, buf in bank.named_buffers() if buf is not None}
    assert built == {"log_prior", "_cone"}
    assert bank._cone.shape == (11, 11)
    bank.scores(torch.rand(1, 1, 32, 32), method="folded")
    assert bank._templates is None and bank._block0 is not None
    bank.double()  # rebuilt exactly in the new dtype, groups that were never built stay unbuilt
    assert bank._cone.dtype == bank._block0.dtype == torch.float64 and bank._templates is None


@pytest.mark.parametrize("n, beta, radius", [(32, 12.0, 5), (64, 12.0, 10), (6, 3.0, 3), (4, 0.5, 3), (8, 100.0, 0),
                                             (32, 1e-308, 31), (1, 4.0, 0)])
def test_cone_radius_is_the_last_positive_cell(n, beta, radius):
    assert cone_radius(n, beta) == radius
    d = torch.arange(n + 1, dtype=torch.float64)
    positive = (d * (-beta / n) + 1.0).clamp(min=-1.0) > -1.0
    assert radius == min(int(positive.nonzero().max()), n - 1)


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"n": 3.5}, {"n": 4, "beta": 0}, {"n": 4, "beta": "x"}, {"n": 4, "tau": -1}]
)
def test_template_bank_rejects_bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        TemplateBank(**kwargs)


# --- mask ------------------------------------------------------------------------------------


def test_mask_keeps_the_diamond_at_the_peak():
    n, beta = 8, 4.0
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, n, n, generator=g, dtype=torch.float64)
    x[0, 1, 2, 5] = 5.0  # a known peak
    masked, mu = InterpretableMask(n, beta)(x)
    assert mu.dtype == torch.long and mu.shape == (3, 4)
    assert mu[0, 1].item() == 2 * n + 5
    shapes = template_shapes(n, beta, dtype=torch.float64)
    for b in range(3):
        for c in range(4):
            m = shapes[mu[b, c]].view(n, n)
            inside = m > 0
            assert torch.all(masked[b, c][~inside] == 0)
            torch.testing.assert_close(masked[b, c][inside], (x[b, c] * m)[inside], rtol=0, atol=0)
            assert inside.sum() > 1 and (~inside).sum() > 0


def test_further_part_locations_lie_outside_earlier_diamonds_and_reach_the_ratio():
    from napari_icnn.icnn.masked import mask_shapes, peak_set_shapes

    n, beta = 16, 4.0  # the positive part of a diamond: L1 distance below 4 cells
    x = torch.zeros(2, 1, n, n, dtype=torch.float64)
    x[0, 0, 2, 2], x[0, 0, 2, 4] = 5.0, 4.9  # the second lies in the first one's diamond: the same part
    x[0, 0, 12, 12] = 3.0  # far away and 0.6 of the maximum: a part of its own
    x[0, 0, 12, 2] = 2.0  # far away but 0.4 of the maximum
    x[1, 0, 8, 8] = 1.0  # a map with one part
    mu = locate_peaks(x)
    sets = locate_peak_sets(x, mu, 3, n, beta, ratio=0.5)
    assert sets[0, 0].tolist() == [2 * n + 2, 12 * n + 12, -1]
    assert sets[1, 0].tolist() == [8 * n + 8, -1, -1]
    assert locate_peak_sets(x, mu, 3, n, beta, ratio=0.3)[0, 0].tolist() == [2 * n + 2, 12 * n + 12, 12 * n + 2]
    assert locate_peak_sets(x, mu, 1, n, beta).tolist() == mu[..., None].tolist()

    masked, mu_several = InterpretableMask(n, beta, peaks=3)(x)
    assert torch.equal(mu_several, mu)
    assert masked[0, 0, 12, 12] == 3.0 and masked[0, 0, 12, 2] == 0 and masked[0, 0, 2, 4] > 0
    single, _ = InterpretableMask(n, beta)(x)
    assert single[0, 0, 12, 12] == 0  # the paper's mask keeps one part
    torch.testing.assert_close(masked[1], single[1], rtol=0, atol=0)
    # with one location the shape is the paper's template, bit for bit
    one = torch.where(torch.arange(3) == 0, sets, -1)
    torch.testing.assert_close(peak_set_shapes(one, n, n, n, beta, torch.float64),
                               mask_shapes(mu, n, n, n, beta, torch.float64), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="part locations"):
        InterpretableMask(n, peaks=0)
    with pytest.raises(ConfigError, match="peak ratio"):
        InterpretableMask(n, peaks=2, peak_ratio=0.0)


def test_mask_gradient_is_grad_times_positive_part_of_a_constant_mask():
    n = 6
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(2, 3, n, n, generator=g, dtype=torch.float64)).requires_grad_()
    upstream = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64)
    masked, mu = InterpretableMask(n)(x)
    masked.backward(upstream)
    m = template_shapes(n, dtype=torch.float64)[mu].view(2, 3, n, n)
    torch.testing.assert_close(x.grad, upstream * m.clamp(min=0), rtol=0, atol=0)
    # cells where x == 0 inside the diamond still pass the gradient, as the official code does
    zero_inside = (x.detach() == 0) & (m > 0)
    assert zero_inside.any() and torch.all(x.grad[zero_inside] == upstream[zero_inside] * m[zero_inside])


def test_argmax_and_centroid_locate_a_known_map():
    n = 7
    x = torch.zeros(1, 3, n, n)
    x[0, 0, 1, 1], x[0, 0, 5, 5] = 3.0, 1.0  # centre of mass (2, 2), strongest at (1, 1)
    x[0, 1, 2, 4], x[0, 1, 3, 4] = 1.0, 1.0  # row 2.5 rounds half up to 3
    # channel 2 stays all-zero: both give cell (0, 0)
    argmax = locate_peaks(x, "argmax")[0].tolist()
    centroid = locate_peaks(x, "centroid")[0].tolist()
    assert argmax == [1 * n + 1, 2 * n + 4, 0]
    assert centroid == [2 * n + 2, 3 * n + 4, 0]
    by_centroid, mu = InterpretableMask(n, locate="centroid")(x)
    assert mu[0].tolist() == centroid
    by_argmax, _ = InterpretableMask(n)(x)
    # the diamond reaches n/beta = 1.75 cells: (1, 1) is 2 cells from the centroid
    assert by_argmax[0, 0, 1, 1] == 3.0 and by_centroid[0, 0, 1, 1] == 0
    assert by_argmax[0, 0, 5, 5] == 0 and by_centroid[0, 0, 5, 5] == 0


def test_disabled_mask_is_the_identity():
    x = torch.relu(torch.randn(2, 5, 6, 6))
    mask = InterpretableMask(6)
    mask.enabled = False
    out, mu = mask(x)
    assert out is x
    assert torch.equal(mu, x.flatten(2).argmax(-1))


def test_mask_accepts_channels_last_and_bf16():
    x = torch.relu(torch.randn(2, 4, 8, 8)).contiguous(memory_format=torch.channels_last)
    ref, mu_ref = InterpretableMask(8)(x.contiguous())
    out, mu = InterpretableMask(8)(x)
    assert torch.equal(out, ref) and torch.equal(mu, mu_ref)
    out16, _ = InterpretableMask(8)(x.bfloat16())
    assert out16.dtype == torch.bfloat16


def test_mask_rejects_unknown_location_rule():
    with pytest.raises(ConfigError, match="centroid"):
        InterpretableMask(8, locate="mean")


# --- filter assignment -----------------------------------------------------------------------


def test_assignment_ema_on_a_constructed_batch():
    fa = FilterAssignment(n_filters=4, n_categories=2, n_free=1, momentum=0.5)
    assert fa.categories.tolist() == [-1, 0, 1, 0]  # round-robin before any evidence
    max_act = torch.tensor([[1.0, 2.0, 0.0, 4.0], [3.0, 0.0, 6.0, 2.0], [5.0, 4.0, 3.0, 0.0]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    fa.update(max_act, labels)
    # category 0: images 0 and 2; category 1: images 1 and 2
    want = torch.tensor([[3.0, 4.0], [3.0, 2.0], [1.5, 4.5], [2.0, 1.0]])
    torch.testing.assert_close(fa.ema, want)
    assert fa.categories.tolist() == [-1, 0, 1, 0]

    # only category 1 has positives: category 0 keeps its average
    fa.update(torch.tensor([[0.0, 10.0, 0.0, 9.0]]), torch.tensor([[0, 1]]))
    want[:, 1] = 0.5 * want[:, 1] + 0.5 * torch.tensor([0.0, 10.0, 0.0, 9.0])
    torch.testing.assert_close(fa.ema, want)
    assert fa.categories.tolist() == [-1, 1, 1, 1]

    pos = fa.positive_mask(torch.tensor([[1, 0], [0, 1], [0, 0]]))
    assert pos.tolist() == [
        [True, False, False, False],
        [True, True, True, True],
        [True, False, False, False],
    ]


def test_assignment_uses_only_seen_categories():
    fa = FilterAssignment(3, 3, momentum=0.9)
    fa.update(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0, 1, 0]]))
    assert fa.initialised.tolist() == [False, True, False]
    assert fa.categories.tolist() == [1, 1, 1]


def test_assignment_does_not_learn_in_eval_mode():
    fa = FilterAssignment(3, 2)
    fa.eval()
    fa.update(torch.ones(4, 3), torch.ones(4, 2))
    assert not fa.initialised.any() and torch.all(fa.ema == 0)
    fa.train()
    fa.update(torch.ones(4, 3), torch.ones(4, 2))
    assert fa.initialised.all()


def test_free_filters_are_always_positive_and_single_category_takes_all():
    fa = FilterAssignment(5, 1, n_free=2)
    assert fa.categories.tolist() == [-1, -1, 0, 0, 0]
    labels = torch.tensor([1, 0, 0, 1])  # (B,) accepted for one category
    pos = fa.positive_mask(labels)
    assert pos[:, :2].all()
    assert pos[:, 2:].tolist() == [[True] * 3, [False] * 3, [False] * 3, [True] * 3]
    every = FilterAssignment(3, 2, n_free=3)
    assert every.positive_mask(torch.zeros(2, 2)).all()


def test_assignment_state_round_trips():
    fa = FilterAssignment(6, 3, n_free=1)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        fa.update(torch.rand(8, 6, generator=g), (torch.rand(8, 3, generator=g) < 0.5).long())
    restored = FilterAssignment(6, 3, n_free=1)
    restored.load_state_dict(fa.state_dict())
    assert torch.equal(restored.ema, fa.ema) and torch.equal(restored.initialised, fa.initialised)
    assert torch.equal(restored.categories, fa.categories)
    with pytest.raises(RuntimeError):
        FilterAssignment(6, 2).load_state_dict(fa.state_dict())


def test_assignment_rejects_bad_shapes_and_parameters():
    fa = FilterAssignment(4, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        fa.update(torch.ones(3, 4), torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        fa.update(torch.ones(3, 5), torch.ones(3, 2))
    with pytest.raises(ConfigError, match="free"):
        FilterAssignment(4, 2, n_free=5)


# --- a filter learns to localise a part ------------------------------------------------------

_SIDE, _STRIDE, _OFFSET = 48, 4, 1.5  # two 2x2 pools; cell (i, j) is centred on 1.5 + 4 * (i, j)


def _blob_images(count: int, gen: torch.Generator):
    """Noise everywhere; a Gaussian blob (sigma 2 px) at a random place in half of the images."""
    yy, xx = torch.meshgrid(torch.arange(_SIDE), torch.arange(_SIDE), indexing="ij")
    centre = 4 + torch.rand(count, 2, generator=gen) * (_SIDE - 8)
    has = torch.rand(count, generator=gen) < 0.5
    d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    img = has[:, None, None] * torch.exp(-d2 / 8.0) + 0.4 * torch.randn(count, _SIDE, _SIDE, generator=gen)
    return img[:, None], has, centre


def _hit_rate(net, mask, images, centres, n):
    with torch.no_grad():
        _, mu = mask(net(images))
    i, j = mu[:, 0] // n, mu[:, 0] % n
    ci = ((centres[:, 0] - _OFFSET) / _STRIDE).round()
    cj = ((centres[:, 1] - _OFFSET) / _STRIDE).round()
    return (((i - ci).abs() <= 1) & ((j - cj).abs() <= 1)).float().mean().item()


def test_a_filter_trained_with_the_template_loss_localises_a_moving_blob():
    """One interpretable filter on a tiny conv net, trained only by the template loss with labels.

    Images with the blob must fit the template at the filter's peak; images without it must fit
    T⁻ (silence). Noise (std 0.4, against a blob of height 1) is present in every image, so the
    filter has to learn the blob itself. At initialisation the peak of a random filter follows the
    noise (or the map is all zero), so it falls within one cell of the blob only about as often as
    a random cell does (3x3 cells of 12x12, ~6-20 %); measured below before training.
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train_x, train_has, _ = _blob_images(1024, gen)
    test_x, test_has, test_centre = _blob_images(400, gen)
    test_x, test_centre = test_x[test_has], test_centre[test_has]

    n = _SIDE // _STRIDE
    net = nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 1, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    bank, mask = TemplateBank(n), InterpretableMask(n)

    before = _hit_rate(net, mask, test_x, test_centre, n)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(120):  # every seed tried (0-9) localises by step 100
        idx = torch.randint(0, len(train_x), (32,))
        loss = template_filter_loss(net(train_x[idx]), train_has[idx][:, None], bank)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _hit_rate(net, mask, test_x, test_centre, n)

    assert before < 0.5, (
        f"the untrained filter already finds the blob ({before:.0%}): the test would prove nothing"
    )
    assert after >= 0.9, (
        f"trained filter peaks on the blob in only {after:.0%} of held-out images (was {before:.0%})"
    )
    assert math.isfinite(loss.item())


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and _X86), reason="oneDNN's x86 kernels only")
@pytest.mark.parametrize("isa", ["AVX2", "SSE41"])
def test_cone_correlation_stays_on_the_direct_depthwise_kernel(isa):
    """On older instruction sets oneDNN leaves its direct depthwise kernel once the zero padding is
    wider than a register block (k = 11 on AVX2); the scores must not fall onto the ~20x slower path."""
    code = (
        "import torch\n"
        "from napari_icnn.icnn.templates import TemplateBank\n"
        "for n in (16, 32, 64):\n"
        "    x = torch.rand(2, 16, n, n, requires_grad=True)\n"
        "    TemplateBank(n, 12.0).scores(x, method='conv').sum().backward()\n"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, ONEDNN_VERBOSE="1", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    convs = [line for line in run.stdout.splitlines() if ",exec,cpu,convolution," in line]
    assert len(convs) == 6, run.stdout[-2000:]  # forward and backward at each n
    assert all(",jit_dw:" in line for line in convs), "\n".join(convs)
