"""PyTorch definitions of the CIFAR families, written from the reference sheet (section 3), for parity tests.

Same module structure and state_dict keys as the official repo (`feature.{i}`, `layer{s}.{b}.conv1`,
`select.indexes`, ...), so `pruning_jax.io.to_torch_state_dict` output loads with strict=True.
"""
import torch
from torch import nn
import torch.nn.functional as F


class VGG(nn.Module):
  def __init__(self, cfg, num_classes, head):
    super().__init__()
    mods, c = [], 3
    for v in cfg:
      if v == 'M':
        mods.append(nn.MaxPool2d(2, 2))
      else:
        mods += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
        c = v
    self.feature = nn.Sequential(*mods)
    if head == 'l1':
      self.classifier = nn.Sequential(nn.Linear(c, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, num_classes))
    else:
      self.classifier = nn.Linear(c, num_classes)

  def forward(self, x):
    x = F.avg_pool2d(self.feature(x), 2)
    return self.classifier(x.flatten(1))


class BasicBlock(nn.Module):
  def __init__(self, inplanes, planes, width, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.down = stride != 1 or inplanes != planes
    self.planes = planes

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    res = x
    if self.down:  # option A, rebuilt from .data in the original: no gradient
      r = F.avg_pool2d(x, 2, 2).detach()
      res = torch.cat([r, r.new_zeros(r.shape[0], self.planes - r.shape[1], *r.shape[2:])], 1)
    return F.relu(out + res)


class CifarResNet(nn.Module):
  def __init__(self, cfg, num_classes):
    super().__init__()
    n = len(cfg) // 3
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    inplanes = 16
    for s, planes in enumerate((16, 32, 64)):
      blocks = []
      for b in range(n):
        blocks.append(BasicBlock(inplanes, planes, cfg[s * n + b], 2 if (s and not b) else 1))
        inplanes = planes
      setattr(self, f'layer{s + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean((2, 3)))


class Select(nn.Module):
  def __init__(self, n):
    super().__init__()
    self.indexes = nn.Parameter(torch.ones(n))

  def forward(self, x):
    idx = torch.nonzero(self.indexes.data).flatten()
    return x[:, idx]


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes, cfg, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.select = Select(inplanes)
    self.conv1 = nn.Conv2d(cfg[0], cfg[1], 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cfg[1])
    self.conv2 = nn.Conv2d(cfg[1], cfg[2], 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cfg[2])
    self.conv3 = nn.Conv2d(cfg[2], 4 * planes, 1, bias=False)
    self.downsample = None
    if stride != 1 or inplanes != 4 * planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False))

  def forward(self, x):
    out = self.conv1(F.relu(self.select(self.bn1(x))))
    out = self.conv2(F.relu(self.bn2(out)))
    out = self.conv3(F.relu(self.bn3(out)))
    return out + (x if self.downsample is None else self.downsample(x))


class PreResNet(nn.Module):
  def __init__(self, cfg, num_classes):
    super().__init__()
    n = (len(cfg) - 1) // 9
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    inplanes = 16
    for s, planes in enumerate((16, 32, 64)):
      blocks = []
      for b in range(n):
        k = s * n + b
        blocks.append(Bottleneck(inplanes, planes, cfg[3 * k:3 * k + 3], 2 if (s and not b) else 1))
        inplanes = 4 * planes
      setattr(self, f'layer{s + 1}', nn.Sequential(*blocks))
    self.bn = nn.BatchNorm2d(256)
    self.select = Select(256)
    self.fc = nn.Linear(cfg[-1], num_classes)

  def forward(self, x):
    x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
    return self.fc(F.relu(self.select(self.bn(x))).mean((2, 3)))


class DenseLayer(nn.Module):
  def __init__(self, inplanes, width, growth):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.select = Select(inplanes)
    self.conv1 = nn.Conv2d(width, growth, 3, padding=1, bias=False)

  def forward(self, x):
    return torch.cat([x, self.conv1(F.relu(self.select(self.bn1(x))))], 1)


class Transition(nn.Module):
  def __init__(self, inplanes, width):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.select = Select(inplanes)
    self.conv1 = nn.Conv2d(width, inplanes, 1, bias=False)

  def forward(self, x):
    return F.avg_pool2d(self.conv1(F.relu(self.select(self.bn1(x)))), 2)


class DenseNet(nn.Module):
  def __init__(self, cfg, num_classes, growth=12):
    super().__init__()
    n = (len(cfg) - 3) // 3
    self.conv1 = nn.Conv2d(3, 2 * growth, 3, padding=1, bias=False)
    c, k = 2 * growth, 0
    for s in range(3):
      layers = []
      for _ in range(n):
        layers.append(DenseLayer(c, cfg[k], growth))
        c += growth
        k += 1
      setattr(self, f'dense{s + 1}', nn.Sequential(*layers))
      if s < 2:
        setattr(self, f'trans{s + 1}', Transition(c, cfg[k]))
        k += 1
    self.bn = nn.BatchNorm2d(c)
    self.select = Select(c)
    self.fc = nn.Linear(cfg[-1], num_classes)

  def forward(self, x):
    x = self.trans1(self.dense1(self.conv1(x)))
    x = self.dense3(self.trans2(self.dense2(x)))
    return self.fc(F.relu(self.select(self.bn(x))).mean((2, 3)))
