"""The ICNN networks: geometry, outputs, ablation contributions, the ordinary baseline."""

from __future__ import annotations

import pytest
import torch

from napari_icnn.errors import ConfigError
from napari_icnn.icnn import ICNN, ICNNOutput, template_filter_loss

GEOMETRY = [
    pytest.param("vgg", 64, 8, 8, 3.0, id="vgg-64"),
    pytest.param("vgg", 128, 16, 8, 3.0, id="vgg-128"),
    pytest.param("resnet", 64, 4, 16, 0.0, id="resnet-64"),
    pytest.param("resnet", 128, 8, 16, 0.0, id="resnet-128"),
]


@pytest.mark.parametrize("arch, size, n, stride, offset", GEOMETRY)
def test_geometry_and_output_shapes(arch, size, n, stride, offset):
    torch.manual_seed(0)
    net = ICNN(arch, n_outputs=3, n_filters=10, image_size=size, width=8).eval()
    assert (net.n, net.stride, net.offset) == (n, stride, offset)
    assert net.bank.n == n and net.mask.n == n
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size))
    assert isinstance(out, ICNNOutput)
    assert out.logits.shape == (2, 3)
    assert out.maps.shape == out.masked.shape == (2, 10, n, n)
    assert out.mu.shape == (2, 10) and out.mu.dtype == torch.long
    assert torch.all(out.maps >= 0) and torch.all(out.mu < n * n)


@pytest.mark.parametrize(
    "arch, size", [("vgg", 128), ("resnet", 128), ("resnet", 256)], ids=["vgg", "resnet", "resnet-256"]
)
def test_a_bright_pixel_lights_up_the_cell_whose_centre_it_is(arch, size):
    # A random filter's response is lopsided, so the effect of the pixel is summed over filters
    # and over three random networks; the strongest cell must be the predicted one (+- 1 cell).
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(ICNN(arch, n_filters=32, image_size=size, width=8, dropout=0.0).double().eval())
    n, stride, offset = nets[0].n, nets[0].stride, nets[0].offset
    cells = [(2, 2), (2, n - 3), (n - 3, n // 2), (n // 2, 3)]
    blank = torch.zeros(1, 3, size, size, dtype=torch.float64)
    images = blank.repeat(len(cells), 1, 1, 1)
    for k, (i, j) in enumerate(cells):
        images[k, :, int(offset + stride * i), int(offset + stride * j)] = 10.0
    effect = torch.zeros(len(cells), n, n, dtype=torch.float64)
    with torch.no_grad():
        for net in nets:
            effect += (net(images).maps - net(blank).maps).abs().sum(dim=1)
    for (i, j), e in zip(cells, effect, strict=True):
        k = int(e.argmax())
        assert abs(k // n - i) <= 1 and abs(k % n - j) <= 1, (
            f"pixel at cell {(i, j)} lights cell {(k // n, k % n)}"
        )


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_contributions_equal_zeroing_each_filter_in_turn(arch):
    torch.manual_seed(1)
    net = ICNN(arch, n_outputs=3, n_filters=12, image_size=64, width=8, dropout=0.5).double()
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 2])
    net.eval()
    with torch.no_grad():
        out = net(x)
        got = net.contributions(out.masked, target)
        full = net.head(out.masked)
        want = torch.empty(4, 12, dtype=torch.float64)
        for c in range(12):
            ablated = out.masked.clone()
            ablated[:, c] = 0
            want[:, c] = (full - net.head(ablated)).gather(1, target[:, None])[:, 0]
        net.train()  # dropout on: contributions still ablate through the eval-mode head
        again = net.contributions(out.masked, target)
    assert got.shape == (4, 12)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    assert (got.abs() > 0).any()
    # one int target for every image (a single-logit model uses 0)
    torch.testing.assert_close(
        net.contributions(out.masked, 2), net.contributions(out.masked, torch.full((4,), 2))
    )


def test_the_mask_is_on_when_interpretable_and_switchable_for_warm_up():
    torch.manual_seed(2)
    net = ICNN("vgg", n_filters=8, image_size=64, width=8).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert not torch.equal(out.masked, out.maps)
        net.set_mask_enabled(False)
        off = net(x)
    assert torch.equal(off.masked, off.maps) and torch.equal(off.maps, out.maps)
    assert torch.equal(off.mu, out.mu)


def test_the_ordinary_cnn_never_masks():
    torch.manual_seed(3)
    net = ICNN("vgg", n_filters=8, image_size=64, width=8, interpretable=False).eval()
    net.set_mask_enabled(True)
    net.mask.enabled = True  # even forced, the ordinary network passes maps through
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert torch.equal(out.masked, out.maps)
    assert torch.equal(out.mu, out.maps.flatten(2).argmax(-1))


def test_config_rebuilds_the_same_architecture():
    net = ICNN("resnet", n_outputs=4, n_filters=6, image_size=96 + 32, width=4, resnet_layers=(1, 2, 1, 1))
    twin = ICNN(**net.config)
    twin.load_state_dict(net.state_dict(), strict=True)
    assert twin.n == net.n and twin.config == net.config
    assert not any("templates" in k or "shapes" in k for k in net.state_dict())


def test_first_training_steps_under_bf16_autocast_and_channels_last():
    torch.manual_seed(4)
    net = ICNN("vgg", n_filters=8, image_size=64, width=8).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        loss_f = template_filter_loss(out.maps, y.bool().expand(-1, 8), net.bank)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.float(), y) + 100 * loss_f
    assert loss_f.dtype == torch.float32 and torch.isfinite(loss)
    before = net.conv.weight.detach().clone()
    loss.backward()
    opt.step()
    assert torch.isfinite(net.conv.weight).all() and not torch.equal(before, net.conv.weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "densenet"}, "arch"),
        ({"image_size": 100}, "multiple of 8"),
        ({"arch": "resnet", "image_size": 200}, "multiple of 16"),
        ({"n_filters": 0}, "n_filters"),
        ({"dropout": 1.0}, "dropout"),
        ({"locate": "mode"}, "peak location"),
        ({"resnet_layers": (1, 1)}, "resnet_layers"),
        ({"peaks": 0}, "part locations"),
        ({"peaks": 2, "peak_ratio": 0.0}, "peak ratio"),
    ],
)
def test_bad_configurations_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ICNN(**{"width": 4, **kwargs})



def test_several_part_locations_per_filter_are_part_of_the_architecture():
    torch.manual_seed(0)
    paper = ICNN(width=4, image_size=64, n_filters=3)
    assert "peaks" not in paper.config and paper(torch.rand(2, 3, 64, 64)).peaks is None  # bundles read as before
    several = ICNN(width=4, image_size=64, n_filters=3, peaks=3, peak_ratio=0.4)
    rebuilt = ICNN(**several.config)
    assert (rebuilt.mask.peaks, rebuilt.mask.peak_ratio) == (3, 0.4)
    out = several(torch.rand(2, 3, 64, 64))
    assert out.peaks is not None and out.peaks.shape == (2, 3, 3) and torch.equal(out.peaks[..., 0], out.mu)
    several.set_mask_enabled(False)  # warm-up: the maps pass unmasked, the locations are still known
    out = several(torch.rand(2, 3, 64, 64))
    assert torch.equal(out.masked, out.maps) and out.peaks is not None


def test_a_vgg_top_map_twice_as_fine_shares_the_weights_and_knows_its_cells():
    """``--top-stride 4``: the second pooling left out, a 2n x 2n map whose cells are centred where the
    receptive-field arithmetic says, from the same weights as the stride-8 network."""
    import torch

    from napari_icnn.config import TrainConfig
    from napari_icnn.errors import ConfigError
    from napari_icnn.icnn.networks import ICNN

    torch.manual_seed(0)
    coarse = ICNN(image_size=64, n_filters=4, width=16)
    fine = ICNN(image_size=64, n_filters=4, width=16, vgg_stride=4)
    fine.load_state_dict(coarse.state_dict())  # a fine-tuning can start from the stride-8 network
    assert (coarse.n, coarse.stride, coarse.offset) == (8, 8, 3.0)
    assert (fine.n, fine.stride, fine.offset) == (16, 4, 1.0)
    assert fine(torch.zeros(1, 3, 64, 64)).maps.shape == (1, 4, 16, 16)
    assert ICNN(**fine.config).n == 16 and "top_stride" not in coarse.config  # the default is not stored
    assert ICNN(image_size=64, n_filters=4, width=16, vgg_stride=4).n == 16  # as older bundles store it
    # the receptive field of cell (9, 5) is centred on input pixel offset + stride * (9, 5)
    fine.eval()
    grad_input = (0.5 + 0.1 * torch.randn(1, 3, 64, 64)).requires_grad_(True)
    feats = fine.backbone(grad_input)
    assert (feats[0, :, 9, 5] > 0).any(), feats[0, :, 9, 5]
    feats[0, :, 9, 5].sum().backward()
    ys, xs = torch.nonzero(grad_input.grad.abs().sum(dim=1)[0], as_tuple=True)
    centre = ((float(ys.min()) + float(ys.max())) / 2, (float(xs.min()) + float(xs.max())) / 2)
    assert abs(centre[0] - (1 + 4 * 9)) <= 1.0 and abs(centre[1] - (1 + 4 * 5)) <= 1.0, centre
    with pytest.raises(ConfigError, match="--top-stride"):
        TrainConfig(top_stride=4, arch="resnet")
    with pytest.raises(ConfigError, match="--top-stride"):
        TrainConfig(top_stride=16)
    with pytest.raises(ConfigError, match="top_stride"):
        ICNN(arch="resnet", image_size=64, n_filters=4, width=8, top_stride=4)
    with pytest.raises(ConfigError, match="--top-stride"):
        TrainConfig(top_stride=2)


def test_resnet_top_map_twice_as_fine_has_the_same_weights_and_cell_centres():
    """ResNet at stride 8 (layer4 unstrided) loads the stride-16 weights, and each cell's receptive field is centred
    on stride * (i, j): the geometry the templates and the part metrics assume."""
    from napari_icnn.icnn.networks import ICNN

    torch.manual_seed(0)
    coarse = ICNN(arch="resnet", image_size=128, n_filters=4, width=8)
    fine = ICNN(arch="resnet", image_size=128, n_filters=4, width=8, top_stride=8)
    fine.load_state_dict(coarse.state_dict())
    assert (coarse.n, coarse.stride, coarse.offset) == (8, 16, 0.0)
    assert (fine.n, fine.stride, fine.offset) == (16, 8, 0.0)
    assert fine.config["top_stride"] == 8 and ICNN(**fine.config).n == 16
    assert fine(torch.zeros(1, 3, 128, 128)).maps.shape == (1, 4, 16, 16)
    for net, cell in ((fine, (8, 7)), (coarse, (4, 3))):
        net.eval()
        x = (0.5 + 0.1 * torch.randn(1, 3, 128, 128)).requires_grad_(True)
        feats = net.backbone(x)
        feats[0, :, cell[0], cell[1]].sum().backward()
        ys, xs = torch.nonzero(x.grad.abs().sum(dim=1)[0], as_tuple=True)
        centre = ((float(ys.min()) + float(ys.max())) / 2, (float(xs.min()) + float(xs.max())) / 2)
        want = (net.offset + net.stride * cell[0], net.offset + net.stride * cell[1])
        assert abs(centre[0] - want[0]) <= 1.0 and abs(centre[1] - want[1]) <= 1.0, (net.stride, centre, want)
