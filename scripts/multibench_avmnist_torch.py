"""Times one training epoch of MultiBench's AV-MNIST late-fusion model in PyTorch (needs torch, not mmlearn).

The reference that `configs/avmnist/concat.py` is compared with (docs/benchmark.md): MultiBench's
`examples/multimedia/avmnist_simple_late_fusion.py`, written here for timing. The model and the step are
MultiBench's: LeNet(1, 6, 3) on the 28x28 image and LeNet(1, 6, 5) on the 112x112 spectrogram (conv without
bias -> BatchNorm -> relu -> 2x2 max-pool per block, plus the per-block global average pooling its LeNet
computes and the late-fusion model does not use), concat, MLP 240 -> 100 -> 10, cross-entropy, gradient
norm clipped at 8, SGD lr 0.1 with weight decay 1e-4, batch 40. The loader is MultiBench's too: a shuffled
`DataLoader` over a list of per-example [image, audio, label] items, with its default 8 workers.

On a GPU (`--device=cuda`, or `auto` where one is there) the model lives on it and each batch is moved
to it as MultiBench does (`.to(device)` per step), and the clock stops after the device has finished.

The examples are random (uint8 values scaled to [0, 1] like MultiBench's `/ 255`), so the script needs no
data files: a step's cost does not depend on the values. It prints one line,
`multibench_avmnist examples_per_s=... epoch_s=...`, for the steps after the first (warm-up) batch.

  python scripts/multibench_avmnist_torch.py --examples=55000
  python scripts/multibench_avmnist_torch.py --device=cuda --batch_size=512
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
  def __init__(self, in_channels: int, channels: int, additional_layers: int):
    super().__init__()
    widths = [channels * 2**i for i in range(additional_layers + 1)]
    first = nn.Conv2d(in_channels, widths[0], kernel_size=5, padding=2, bias=False)
    pairs = zip(widths[:-1], widths[1:], strict=True)
    rest = [nn.Conv2d(a, b, kernel_size=3, padding=1, bias=False) for a, b in pairs]
    self.convs = nn.ModuleList([first, *rest])
    self.bns = nn.ModuleList([nn.BatchNorm2d(w) for w in widths])
    for conv in self.convs:
      nn.init.kaiming_uniform_(conv.weight)

  def forward(self, x):
    for conv, bn in zip(self.convs, self.bns, strict=True):
      x = F.max_pool2d(F.relu(bn(conv(x))), 2)
      torch.mean(x.view(x.size(0), x.size(1), -1), 2)  # MultiBench's per-block global pooling, unused.
    return x.squeeze()


class LateFusion(nn.Module):
  def __init__(self):
    super().__init__()
    self.encoders = nn.ModuleList([LeNet(1, 6, 3), LeNet(1, 6, 5)])
    self.fc, self.fc2 = nn.Linear(240, 100), nn.Linear(100, 10)

  def forward(self, image, audio):
    fused = torch.cat([e(x).flatten(1) for e, x in zip(self.encoders, (image, audio), strict=True)], dim=1)
    return self.fc2(F.relu(self.fc(fused)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--examples", type=int, default=55000, help="Training examples in the epoch.")
  parser.add_argument("--batch_size", type=int, default=40)
  parser.add_argument("--num_workers", type=int, default=8, help="DataLoader workers (MultiBench's default).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda where there is one).")
  args = parser.parse_args()
  if args.device == "auto":
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
  device = torch.device(args.device)

  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  images = rng.integers(0, 256, (args.examples, 1, 28, 28), np.uint8).astype(np.float32) / 255.0
  audio = rng.integers(0, 256, (args.examples, 1, 112, 112), np.uint8).astype(np.float32) / 255.0
  labels = rng.integers(0, 10, args.examples)
  items = [[images[i], audio[i], labels[i]] for i in range(args.examples)]
  loader = torch.utils.data.DataLoader(
    items, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
  )
  model = LateFusion().to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
  objective = nn.CrossEntropyLoss()
  model.train()
  steps, start = 0, None
  for image, spectrogram, label in loader:
    optimizer.zero_grad()
    image, spectrogram, label = image.to(device), spectrogram.to(device), label.to(device)
    loss = objective(model(image.float(), spectrogram.float()), label)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 8)
    optimizer.step()
    if start is None:  # The first batch also starts the loader's workers: not timed.
      if device.type == "cuda":
        torch.cuda.synchronize()
      start = time.perf_counter()
    else:
      steps += 1
  if device.type == "cuda":
    torch.cuda.synchronize()
  seconds = time.perf_counter() - start
  print(
    f"multibench_avmnist examples_per_s={steps * args.batch_size / seconds:.1f} epoch_s={seconds:.1f}"
    f" device={device} batch_size={args.batch_size}"
  )


if __name__ == "__main__":
  main()
