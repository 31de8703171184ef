"""Architectures, by name. Every model takes images in [0, 1]: normalisation is its first module,
so eps is always in pixel units.

Names: `smallcnn`, `lenet300` (LeNet-300-100), `lenet5`, `vgg16` (CIFAR VGG-16 with BN),
`resnet18` (CIFAR stem), `wrn28-K` (WideResNet-28-K), and `timm:<name>` for any timm model.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from rbench.core.errors import RbenchError, nearest


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _flat_size(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


def smallcnn(input_shape, num_classes, widths=(16, 32, 32), hidden=100) -> nn.Module:
    """Three 3x3 convs (the last two strided) and two linear layers: the embedded suites' model
    (about 180k weights at 28x28, enough conv weight for Tucker-2 to matter)."""
    c = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, widths[0], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    return nn.Sequential(
        features, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def lenet300(input_shape, num_classes) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of the lottery-ticket and DNS papers."""
    d = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet5(input_shape, num_classes) -> nn.Module:
    """LeNet-5: conv6-pool-conv16-pool-fc120-fc84 (padding 2 keeps 28x28 inputs classic)."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    return nn.Sequential(
        features,
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(input_shape, num_classes) -> nn.Module:
    """VGG-16 with BatchNorm, CIFAR variant: 13 convs, global pooling, one 512->classes linear."""
    layers: list[nn.Module] = []
    c = input_shape[0]
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (He et al. 2016; 3x3 stem, no max-pool), as in the AT papers."""

    def __init__(self, input_shape, num_classes) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class WideBlock(nn.Module):
    """Pre-activation wide block with a real residual sum (methods.md 5(f))."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016)."""

    def __init__(self, input_shape, num_classes, depth: int = 28, k: int = 10) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        groups, cin = [], 16
        for i, stride in enumerate([1, 2, 2]):
            cout = widths[i + 1]
            groups.append(
                nn.Sequential(
                    *[
                        WideBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                        for j in range(n)
                    ]
                )
            )
            cin = cout
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = torch.relu(self.bn(out))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": smallcnn,
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg16": vgg16,
    "resnet18": ResNet18,
}


class Classifier(nn.Module):
    """Normalisation, then the network: layer paths read `net.<layer>`."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> nn.Module:
    """A `Classifier` of the named architecture for inputs of `input_shape` in [0, 1]."""
    if arch.startswith("timm:"):
        import timm

        try:
            net = timm.create_model(
                arch[5:], pretrained=False, num_classes=num_classes, in_chans=input_shape[0]
            )
        except RuntimeError as exc:
            raise RbenchError(f"timm has no architecture '{arch[5:]}' ({exc})") from None
    elif m := re.fullmatch(r"wrn(\d+)-(\d+)", arch):
        net = WideResNet(input_shape, num_classes, depth=int(m[1]), k=int(m[2]))
    elif arch in ARCHITECTURES:
        net = ARCHITECTURES[arch](input_shape, num_classes)
    else:
        known = [*ARCHITECTURES, "wrn28-10", "timm:<name>"]
        raise RbenchError(f"unknown architecture '{arch}'{nearest(arch, known)}")
    return Classifier(Normalize(mean, std), net)
