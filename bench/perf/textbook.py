"""The textbook PGD-AT epoch that `make bench` measures rbench's trainer against: a host
`DataLoader` with per-sample torchvision transforms, fp32, PGD with a uniform start, and the
usual `.item()` per batch, written the way tutorials and most papers' code do it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rbench.data.splits import Split

EPS, STEP = 8 / 255, 2 / 255
BATCH_SIZE = 128


class HostDataset(torch.utils.data.Dataset):
    """CIFAR-style dataset in host memory: one image at a time through torchvision transforms."""

    def __init__(self, split: Split) -> None:
        import torchvision.transforms as T

        self.x, self.y = split.x, split.y
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i].float().div(255)), self.y[i]


def textbook_pgd(model, x, y, eps, alpha, steps):
    """PGD with a uniform random start, as in Madry et al.'s and most tutorials' code."""
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def textbook_epoch(model, loader, optimizer, device, steps, max_batches=None) -> dict:
    """The textbook PGD-AT epoch: host DataLoader, fp32, `.item()` per batch."""
    total_loss, correct, seen = 0.0, 0, 0
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        model.eval()  # the attack in eval mode, as rbench's default (attack_mode="eval")
        x_adv = textbook_pgd(model, x, y, EPS, STEP, steps)
        model.train()
        out = model(x_adv)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}


def textbook_loader(split: Split, device: torch.device, workers: int):
    return torch.utils.data.DataLoader(
        HostDataset(split),
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
