"""Networks carrying one interpretable layer on top of a MONAI backbone.

backbone (VGG-style stack or MONAI ResNet) -> new 3x3 conv + ReLU (the interpretable filters, the
``maps``) -> template mask (``masked``) -> global max- and mean-pool -> dropout -> linear (logits).
The same class with ``interpretable=False`` is the ordinary CNN it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from napari_icnn.config import TOP_STRIDES
from napari_icnn.errors import ConfigError
from napari_icnn.icnn.masked import LOCATE_MODES, InterpretableMask, check_peaks, locate_peaks
from napari_icnn.icnn.templates import TemplateBank

__all__ = ["ICNN", "ICNNOutput", "ARCHS"]

ARCHS = ("vgg", "resnet")


@dataclass(frozen=True)
class ICNNOutput:
    """What one forward pass of :class:`ICNN` gives."""

    logits: Tensor
    """``(B, n_outputs)`` class logits."""
    maps: Tensor
    """``(B, C, n, n)`` interpretable filter maps after ReLU, before the mask (what the filter loss scores)."""
    masked: Tensor
    """``(B, C, n, n)`` maps after the mask (what the head sees; equal to ``maps`` when the mask is off)."""
    mu: Tensor
    """``(B, C)`` long flat index ``i * n + j`` of each map's peak."""
    features: Tensor | None = None
    """``(B, W, n, n)`` the backbone's output that the interpretable filters read."""
    pre_maps: Tensor | None = None
    """``(B, C, n, n)`` the interpretable filters' maps before their ReLU (the lesion-mask loss's input: a cell
    at 0 after the ReLU would get no gradient)."""
    peaks: Tensor | None = None
    """``(B, C, K)`` long flat indices of every part location of each map (``-1``: none), column 0 being ``mu``;
    ``None`` for a network with one location per filter (the paper's)."""

    def __post_init__(self) -> None:
        if (
            self.maps.ndim != 4
            or self.masked.shape != self.maps.shape
            or self.mu.shape != self.maps.shape[:2]
        ):
            raise ValueError(
                f"inconsistent ICNN output: maps {tuple(self.maps.shape)}, masked {tuple(self.masked.shape)}, "
                f"mu {tuple(self.mu.shape)}"
            )


def _vgg(width: int, stride: int = 8) -> tuple[nn.Module, int, int, float]:
    """Plain conv-BN-ReLU stack of stride 8 (or 4, without the second pooling): (module, out channels, stride,
    offset). Both have the same parameters, so either starts from the other's weights."""
    from monai.networks.blocks import Convolution

    def block(cin: int, cout: int, **kw: Any) -> nn.Module:
        # bias is redundant before batch norm
        return Convolution(2, cin, cout, act="RELU", norm="BATCH", bias=False, **kw)

    w = width
    net = nn.Sequential(
        block(3, w, strides=2, kernel_size=5),
        nn.MaxPool2d(2),
        block(w, 2 * w),
        nn.MaxPool2d(2) if stride == 8 else nn.Identity(),
        block(2 * w, 3 * w),
        block(3 * w, 4 * w),
    )
    # Receptive-field centre of output cell k, in input pixels: each conv/pool of kernel K,
    # stride S and padding P maps (offset, stride) to (offset + stride * ((K-1)/2 - P), stride * S).
    # stem 5/2/2: (0, 2); pool 2/2/0: (1, 4); 3x3 convs keep it; pool: (3, 8).
    return net, 4 * w, stride, 3.0 if stride == 8 else 1.0


class _ResNetFeatures(nn.Module):
    """MONAI's 2D ResNet (basic blocks) up to layer4; stride 16 with ``conv1_t_stride=1``, or 8 with layer4's
    first block unstrided (the same parameters, so either starts from the other's weights)."""

    def __init__(self, width: int, layers: tuple[int, ...], stride: int = 16):
        super().__init__()
        from monai.networks.nets import ResNet

        self.net = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=2,
            n_input_channels=3,
            conv1_t_size=7,
            conv1_t_stride=1,
            feed_forward=False,
        )
        self.out_channels = 8 * width
        if stride == 8:
            # The stride-1 stem and layer1 at half resolution dominate the backbone's cost; an unstrided layer4
            # doubles the map's side for about 8 % more backbone compute (docs/benchmarks.md, 1b).
            first = self.net.layer4[0]
            for conv in first.modules():
                if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):  # conv1 and the 1x1 shortcut
                    conv.stride = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.act(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class ICNN(nn.Module):
    """A CNN whose top filters are interpretable (Zhang, Wu & Zhu, CVPR 2018).

    Parameters
    ----------
    arch
        ``"vgg"``: a VGG-style plain stack of MONAI conv-BN-ReLU blocks, stride 8, widths
        w, 2w, 3w, 4w. ``"resnet"``: MONAI's 2D ResNet with basic blocks up to layer4, first conv
        at stride 1, so stride 16 (a finer top map than the usual 32, for lesion-level parts), or 8.
    n_outputs
        Logits K (1 for a binary task).
    n_filters
        Interpretable filters C.
    image_size
        Input side in pixels; must be a multiple of the stride. Sets the template grid n.
    width
        Base channel width w of the backbone.
    dropout
        Dropout probability before the classifier.
    beta
        Template slope.
    locate
        How the mask finds each map's part: ``"argmax"`` or ``"centroid"``.
    interpretable
        ``False`` builds the ordinary CNN: the same layers with the mask permanently off.
    resnet_layers
        Basic blocks in layer1..layer4 (``arch="resnet"`` only).
    top_stride
        Input pixels per top-map cell (:data:`napari_icnn.config.TOP_STRIDES`): VGG 8, or 4 without the second pooling; ResNet 16, or 8
        with layer4 unstrided. ``None``: the backbone's default.
    vgg_stride
        The name older bundles store a VGG ``top_stride`` under.
    peaks
        Part locations per interpretable filter and image (1: the paper's one part at one place). More let a
        filter stand for several instances of a part that occurs many times in an image, as lesions do: the mask
        keeps the diamond around each further peak that reaches ``peak_ratio`` of the map's maximum, and the
        filter loss fits the positive template built on all of them.
    peak_ratio
        See ``peaks``.

    Attributes
    ----------
    n : int
        Side of the top map (``image_size // stride``).
    stride : int
        Input pixels per map cell.
    offset : float
        Cell ``(i, j)`` is centred on input pixel ``offset + stride * (i, j)`` (row, column).
    bank : TemplateBank
        The templates of this n (for the filter loss).
    mask : InterpretableMask
        The forward mask.
    """

    def __init__(
        self,
        arch: str = "vgg",
        n_outputs: int = 1,
        n_filters: int = 64,
        image_size: int = 256,
        width: int = 32,
        dropout: float = 0.3,
        beta: float = 4.0,
        locate: str = "argmax",
        interpretable: bool = True,
        resnet_layers: tuple[int, ...] | list[int] = (1, 1, 1, 1),
        top_stride: int | None = None,
        vgg_stride: int | None = None,
        peaks: int = 1,
        peak_ratio: float = 0.5,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"network arch must be one of {', '.join(ARCHS)} (got {arch!r})")
        for name, value in (("n_outputs", n_outputs), ("n_filters", n_filters), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"network {name} must be a positive integer (got {value!r})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"network dropout must be in [0, 1) (got {dropout!r})")
        if locate not in LOCATE_MODES:
            raise ConfigError(f"peak location must be one of {', '.join(LOCATE_MODES)} (got {locate!r})")
        check_peaks(peaks, peak_ratio)
        resnet_layers = tuple(int(v) for v in resnet_layers)
        if len(resnet_layers) != 4 or min(resnet_layers) < 1:
            raise ConfigError(f"resnet_layers must be 4 positive block counts (got {resnet_layers!r})")

        if vgg_stride is not None:
            if arch != "vgg" or (top_stride is not None and top_stride != vgg_stride):
                raise ConfigError(f"vgg_stride {vgg_stride!r} is for arch 'vgg' only and names the top_stride")
            top_stride = vgg_stride
        allowed = TOP_STRIDES[arch]
        top_stride = allowed[0] if top_stride is None else top_stride
        if top_stride not in allowed:
            raise ConfigError(f"top_stride must be one of {', '.join(map(str, allowed))} for arch {arch!r} "
                              f"(got {top_stride!r})")
        if arch == "vgg":
            self.backbone, channels, self.stride, self.offset = _vgg(width, top_stride)
        else:
            # every stage's strided 3x3 conv (padding 1) and 1x1 shortcut keep cell centres at stride * (i, j)
            self.backbone = _ResNetFeatures(width, resnet_layers, top_stride)
            channels, self.stride, self.offset = self.backbone.out_channels, top_stride, 0.0
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, int)
            or image_size < 2 * self.stride
            or image_size % self.stride
        ):
            raise ConfigError(
                f"image size must be a multiple of {self.stride} and at least {2 * self.stride} for arch {arch!r} "
                f"(got {image_size!r})"
            )
        self.n = image_size // self.stride
        self.summary_width = 2 * channels
        """Length of :meth:`summary`."""
        self._config = dict(
            arch=arch,
            n_outputs=n_outputs,
            n_filters=n_filters,
            image_size=image_size,
            width=width,
            dropout=float(dropout),
            beta=float(beta),
            locate=locate,
            interpretable=bool(interpretable),
            resnet_layers=list(resnet_layers),
            **({"top_stride": top_stride} if top_stride != allowed[0] else {}),
            # written only when not the paper's form, so bundles of one location per filter read as before
            **({"peaks": int(peaks), "peak_ratio": float(peak_ratio)} if peaks != 1 else {}),
        )
        self.n_filters, self.n_outputs, self.image_size = n_filters, n_outputs, image_size
        self.interpretable = bool(interpretable)
        # Training only: the first ``template_only`` filters get no classification gradient (set by the engine
        # for the label-free filters during the interpretable epochs). Not part of the saved architecture.
        self.template_only = 0

        self.conv = nn.Conv2d(channels, n_filters, kernel_size=3, padding=1, bias=True)
        # a module (not F.relu) so hooks can read the interpretable maps (Grad-CAM's target layer)
        self.act = nn.ReLU()
        self.bank = TemplateBank(self.n, beta)
        self.mask = InterpretableMask(self.n, beta, locate, peaks=peaks, peak_ratio=peak_ratio)
        self.mask.enabled = self.interpretable
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * n_filters, n_outputs)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready), so ``ICNN(**net.config)`` rebuilds the architecture."""
        return dict(self._config)

    def set_mask_enabled(self, on: bool) -> None:
        """Switch the mask on or off (warm-up epochs); the ordinary CNN (interpretable=False) stays off."""
        self.mask.enabled = bool(on) and self.interpretable

    def forward(self, x: Tensor) -> ICNNOutput:
        """Run the network on ``(B, 3, H, W)`` images."""
        features = self.backbone(x)
        pre_maps = self.conv(features)
        maps = self.act(pre_maps)
        sets = None
        if self.interpretable:
            masked, mu, sets = self.mask.apply_with_peaks(maps)
        else:
            masked, mu = maps, locate_peaks(maps, self.mask.locate)
        to_head = masked
        if self.training and self.template_only:
            # these filters still feed the classifier, but learn from the template loss alone
            k = self.template_only
            to_head = torch.cat([masked[:, :k].detach(), masked[:, k:]], dim=1)
        return ICNNOutput(logits=self.head(to_head), maps=maps, masked=masked, mu=mu, features=features,
                          pre_maps=pre_maps, peaks=sets)

    @staticmethod
    def pooled(masked: Tensor) -> Tensor:
        """``(B, 2C)`` features the head receives: every map's max, then every map's mean."""
        return torch.cat([masked.amax(dim=(2, 3)), masked.mean(dim=(2, 3))], dim=1)

    @staticmethod
    def summary(features: Tensor) -> Tensor:
        """``(B, 2W)`` what a photograph looks like to the network: the spatial mean, then the spatial standard
        deviation, of each backbone channel (:attr:`ICNNOutput.features`). The model's experience
        (:mod:`napari_icnn.experience`) is measured on these."""
        return torch.cat([features.mean(dim=(2, 3)), features.std(dim=(2, 3))], dim=1)

    def head(self, masked: Tensor) -> Tensor:
        """Logits from (masked) maps ``(B, C, h, w)``: the layers above the interpretable one."""
        return self.fc(self.drop(self.pooled(masked)))

    def contributions(self, masked: Tensor, target: Tensor | int, reference: Tensor | None = None) -> Tensor:
        """Each filter's share of ``logit[b, target[b]]`` against a reference eye.

        contribution(c) = logit(scan) − logit(scan with filter c's pooled features, its max and its
        mean, set to their ``reference`` values). The head is linear in the pooled features (dropout
        is off in eval), so this is the exact Shapley value of filter c, and the contributions of all
        filters sum to logit(scan) − logit(reference). Without a reference the pooled features are
        set to zero instead (zero-ablation: the logit drop when the map is zeroed), which makes a
        filter that fires alike on every eye look like evidence.

        Parameters
        ----------
        masked
            ``(B, C, h, w)`` maps as the head receives them.
        target
            ``(B,)`` class index per image (or one int for all); 0 for a single-logit model.
        reference
            ``(2C,)`` pooled features of the reference eye (:meth:`pooled` layout), or ``None``.

        Returns
        -------
        Tensor
            ``(B, C)``; positive where the filter supports the target logit.
        """
        b, c = masked.shape[:2]
        target = torch.as_tensor(target, device=masked.device, dtype=torch.long).expand(b)
        feats = self.pooled(masked)  # (B, 2C)
        if reference is not None:
            feats = feats - reference.to(device=feats.device, dtype=feats.dtype)
        weights = self.fc.weight.to(feats.dtype)[target]  # (B, 2C): the target logit's row
        terms = weights * feats
        return terms[:, :c] + terms[:, c:]

    def extra_repr(self) -> str:
        return f"n={self.n}, stride={self.stride}, offset={self.offset:g}, interpretable={self.interpretable}"
