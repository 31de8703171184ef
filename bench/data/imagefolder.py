"""ImageNet-style image folders (`<root>/{train,val}/<class>/<image>`), read lazily: images are
decoded per batch (resize 256, centre crop 224), never held in memory as a whole."""

from __future__ import annotations

from pathlib import Path

import torch

from rbench.core.errors import RbenchError
from rbench.core.suites import DatasetInfo
from rbench.data.splits import DataSplits, Split


class FolderSplit(Split):
    """A Split whose images are files: `images(idx)` decodes them on demand."""

    def __init__(
        self,
        files: list[str],
        y: torch.Tensor,
        ids: torch.Tensor,
        size: int = 224,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(x=torch.empty(0), y=y, ids=ids)
        self.files, self.size, self.device = files, size, torch.device(device)

    def images(self, index) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import functional as TF

        ids = range(len(self.y))[index] if isinstance(index, slice) else index.cpu().tolist()
        out = []
        for i in ids:
            with Image.open(self.files[i]) as img:
                img = TF.center_crop(TF.resize(img.convert("RGB"), 256), self.size)
                out.append(TF.to_tensor(img))
        return torch.stack(out).to(self.device)

    def part(self, start: int, stop: int) -> FolderSplit:
        return FolderSplit(
            self.files[start:stop], self.y[start:stop], self.ids[start:stop], self.size, self.device
        )

    def to(self, device) -> FolderSplit:
        return FolderSplit(self.files, self.y.to(device), self.ids.to(device), self.size, device)


def _scan(folder: Path, classes: list[str]) -> tuple[list[str], torch.Tensor]:
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in {".jpeg", ".jpg", ".png"}:
                files.append(str(path))
                labels.append(label)
    return files, torch.tensor(labels, dtype=torch.long)


def load_imagefolder(info: DatasetInfo, root: Path, n_val_per_class: int = 10) -> DataSplits:
    train_dir, test_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise RbenchError(f"'{root}' lacks train/ and val/ image folders; expected {info.source}")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise RbenchError(f"'{train_dir}' has no class folders; expected {info.source}")
    files, y = _scan(train_dir, classes)
    test_files, test_y = _scan(test_dir, classes)
    gen = torch.Generator().manual_seed(0)
    val_ids = torch.cat(
        [
            ids[torch.randperm(len(ids), generator=gen)[:n_val_per_class]]
            for c in range(len(classes))
            if len(ids := (y == c).nonzero().flatten())
        ]
    )
    is_val = torch.zeros(len(y), dtype=torch.bool)
    is_val[val_ids] = True
    train_ids = (~is_val).nonzero().flatten()
    val_ids = is_val.nonzero().flatten()

    def take(ids: torch.Tensor) -> FolderSplit:
        return FolderSplit([files[i] for i in ids.tolist()], y[ids], ids)

    test = FolderSplit(test_files, test_y, torch.arange(len(test_y)))
    return DataSplits(info, take(train_ids), take(val_ids), test)
