"""Convolutional networks for images of shape (C, H, W): an encoder trunk and a decoder that
mirrors it, both on the flat rows the rest of the library passes around."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ppl_vae.data.splits import chw
from ppl_vae.models.nets import ACTIVATIONS

__all__ = [
    "CONV_ACTIVATION",
    "CONV_CHANNELS",
    "CONV_HIDDEN",
    "ConvNet",
    "DeconvNet",
    "conv_sizes",
]


#: The channels of the stride-2 convolutions when none are given: 28x28 -> 14x14 -> 7x7.
CONV_CHANNELS: tuple[int, ...] = (32, 64)

#: The linear layers between the convolutions and the code, and the nonlinearity, when none
#: are given. Measured on mnist5k (6 epochs, test log p(x), K = 50, 200 digits): ELU with one
#: layer of 256 -121.4 nats, ELU with none -127.5, ReLU with none -138.4, ReLU with 300-300
#: -181.8; softplus (the MLPs' default) with 256 or 300-300 ignored z (-209, no active unit).
CONV_HIDDEN: tuple[int, ...] = (256,)
CONV_ACTIVATION = "elu"

#: Every stride-2 layer has a 4x4 kernel and padding 1, so it halves a side (rounding down)
#: and its transpose doubles it back (plus one row or column where the side was odd).
_KERNEL, _STRIDE, _PADDING = 4, 2, 1


def conv_sizes(image_shape: Sequence[int], layers: int) -> list[tuple[int, int]]:
    """The (height, width) of the feature maps of ``layers`` stride-2 convolutions, the input's
    first: ``layers + 1`` entries. A ``ValueError`` when an image is too small for them.

    >>> conv_sizes((1, 28, 28), 2)
    [(28, 28), (14, 14), (7, 7)]
    >>> conv_sizes((3, 9, 5), 2)
    [(9, 5), (4, 2), (2, 1)]
    """
    _, h, w = chw(image_shape)
    sizes = [(h, w)]
    for _ in range(layers):
        h, w = sizes[-1]
        sizes.append((h // _STRIDE, w // _STRIDE))
    if min(sizes[-1]) < 1:
        need = _STRIDE**layers
        raise ValueError(
            f"a {sizes[0][0]}x{sizes[0][1]} image is too small for {layers} stride-2 "
            f"convolutions (each halves a side; they need at least {need}x{need}): give fewer "
            "--channels, a larger --image-size, or use --net mlp"
        )
    return sizes


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


_WEIGHTED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _he_init(layers: nn.Sequential) -> None:
    """He initialisation (Gaussian weights of variance ``2 / fan_in``, zero biases) for each
    layer that an activation follows, variance ``1 / fan_in`` for one that none follows.

    PyTorch's default (variance ``1 / (3 fan_in)``) shrinks the signal about threefold a layer,
    and takes a transposed convolution's fan-in from its output channels: through the five to
    seven layers of these nets the decoder's output at initialisation hardly moved with z (a
    spread of 0.008 against the MLP's 0.05 on MNIST), and the VAE learned to ignore z before
    the decoder could use it. A transposed convolution of stride s sums ``c_in (k / s)^2``
    terms into each output value: that is its fan-in here.
    """
    for i, m in enumerate(layers):
        if not isinstance(m, _WEIGHTED):
            continue
        if isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            (kh, kw), (sh, sw) = m.kernel_size, m.stride
            transposed = isinstance(m, nn.ConvTranspose2d)
            fan_in = (
                m.in_channels * (kh // sh) * (kw // sw) if transposed else m.in_channels * kh * kw
            )
        activated = i + 1 < len(layers) and not isinstance(layers[i + 1], _WEIGHTED)
        with torch.no_grad():
            m.weight.normal_(0.0, ((2.0 if activated else 1.0) / fan_in) ** 0.5)
            m.bias.zero_()


def _dense(widths: Sequence[int], activation: str, last_activation: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(w_in, w_out))
        if last_activation or i < len(widths) - 2:
            layers.append(_activation(activation))
    return layers


class ConvNet(nn.Module):
    """Images to vectors: stride-2 convolutions, then fully connected layers.

    ``x`` of shape ``(..., C*H*W)`` (rows, as the datasets give them, each an image flattened
    in C-major order) or ``(..., C, H, W)`` maps to ``(..., out_features)``. Each convolution
    has a 4x4 kernel, stride 2 and padding 1 and is followed by the activation; the feature
    map is flattened and passed through linear layers of widths ``hidden`` (each followed by
    the activation) to ``out_features`` (no activation unless ``out_activation``: the trunk of
    a guide's features).

    Args:
        image_shape: ``(C, H, W)``, or ``(H, W)`` for one grey channel.
        out_features: size of the output.
        channels: output channels of the convolutions, one per stride-2 layer.
        hidden: widths of the linear layers between the convolutions and the output.
        activation: hidden nonlinearity, one of :data:`~ppl_vae.models.nets.ACTIVATIONS`.
        out_activation: apply the activation to the output too.

    The layers start from He initialisation (see :func:`_he_init`), not PyTorch's default.

    Cost: per image, about ``2 * sum_i c_{i-1} c_i 16 h_i w_i`` FLOPs in the convolutions.

    >>> net = ConvNet((3, 9, 5), 4, channels=(8, 16), hidden=(32,))
    >>> net(torch.zeros(6, 3 * 9 * 5)).shape, net(torch.zeros(2, 6, 3, 9, 5)).shape
    (torch.Size([6, 4]), torch.Size([2, 6, 4]))
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = CONV_CHANNELS,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        out_activation: bool = False,
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"a convolutional net needs channels of 1 or more, got {channels}")
        self.image_shape = chw(image_shape)
        self.in_features = int(torch.Size(self.image_shape).numel())
        self.out_features = out_features
        sizes = conv_sizes(self.image_shape, len(channels))
        convs: list[nn.Module] = []
        for c_in, c_out in zip((self.image_shape[0], *channels[:-1]), channels, strict=True):
            convs += [nn.Conv2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING), _activation(activation)]
        self.convs = nn.Sequential(*convs)
        flat = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.dense = nn.Sequential(
            *_dense([flat, *hidden, out_features], activation, out_activation)
        )

    def forward(self, x: Tensor) -> Tensor:
        image = x.dim() >= 4 and tuple(x.shape[-3:]) == self.image_shape
        lead = x.shape[:-3] if image else x.shape[:-1]
        if not image and x.shape[-1] != self.in_features:
            raise ValueError(
                f"the convolutional net takes images of shape {self.image_shape} or rows of "
                f"{self.in_features} features, got {tuple(x.shape)}"
            )
        h = self.convs(x.reshape(-1, *self.image_shape))  # (B, c_L, h_L, w_L)
        return self.dense(h.flatten(1)).reshape(*lead, self.out_features)


class DeconvNet(nn.Module):
    """Vectors to images: the mirror of :class:`ConvNet`, with transposed convolutions.

    ``z`` of shape ``(..., in_features)`` maps to ``(..., k * C*H*W)``: ``k =
    outputs_per_pixel`` numbers for each of the image's ``C*H*W`` values, laid out
    parameter-major (``out.unflatten(-1, (k, C*H*W))`` gives ``k`` images, each a flat row in
    C-major order), as the likelihood heads of :mod:`ppl_vae.models.likelihoods` read them.
    Linear layers of widths ``hidden`` (activation after each) lead to a feature map of the
    last of ``channels`` at the encoder's smallest size; each transposed convolution (4x4,
    stride 2, padding 1, with an output padding that restores odd sides exactly) doubles it, the
    last one to ``k * C`` channels with no activation.

    Args:
        in_features: size of the input (the latent code).
        image_shape: ``(C, H, W)``, or ``(H, W)``.
        outputs_per_pixel: numbers per image value (1 for Bernoulli logits).
        channels: the encoder's channels, in the encoder's order; the decoder runs them back.
        hidden: widths of the linear layers before the feature map, in the encoder's order.
        activation: hidden nonlinearity.

    >>> net = DeconvNet(4, (3, 9, 5), 2, channels=(8, 16), hidden=(32,))
    >>> net(torch.zeros(7, 6, 4)).shape
    torch.Size([7, 6, 270])
    """

    def __init__(
        self,
        in_features: int,
        image_shape: Sequence[int],
        outputs_per_pixel: int = 1,
        channels: Sequence[int] = CONV_CHANNELS,
        hidden: Sequence[int] = (),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ValueError(f"a convolutional net needs channels of 1 or more, got {channels}")
        self.image_shape = chw(image_shape)
        self.in_features, self.outputs_per_pixel = in_features, outputs_per_pixel
        self.out_features = outputs_per_pixel * int(torch.Size(self.image_shape).numel())
        sizes = conv_sizes(self.image_shape, len(channels))
        self.start = (channels[-1], *sizes[-1])
        widths = [in_features, *reversed(hidden), channels[-1] * sizes[-1][0] * sizes[-1][1]]
        self.dense = nn.Sequential(*_dense(widths, activation, last_activation=True))
        outs = (*reversed(channels[:-1]), outputs_per_pixel * self.image_shape[0])
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            pad = (h_out - _STRIDE * h_in, w_out - _STRIDE * w_in)  # 1 where the side was odd
            layers.append(nn.ConvTranspose2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING, pad))
            if i < len(channels) - 1:
                layers.append(_activation(activation))
        self.deconvs = nn.Sequential(*layers)
        _he_init(self.dense)
        _he_init(self.deconvs)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.dense(z.reshape(-1, self.in_features)).reshape(-1, *self.start)
        out = self.deconvs(h)  # (B, k*C, H, W), channels grouped parameter-major
        return out.reshape(*lead, self.out_features)
