"""Pictures of segmentation scenes, shared by the lines' demos (the anytime line's scene of every exit, ConvNeXt's
UperNet predictions): class colours, a grid of panels (an image, class-id maps painted, gray masks), atomic PNGs."""

import os


def label_colors(num_classes: int):
  """(num_classes + 1, 3) RGB floats: class 0 (background) black, the others a qualitative map, ignore white (last)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  cmap = matplotlib.colormaps['tab20' if num_classes > 11 else 'tab10']
  colors = [(0.0, 0.0, 0.0)] + [cmap(i % cmap.N)[:3] for i in range(num_classes - 1)] + [(1.0, 1.0, 1.0)]
  return np.asarray(colors, np.float32)


def paint(ids, num_classes: int):
  """(H, W) class ids (255 = ignore) -> (H, W, 3) RGB floats in `label_colors`."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  ids = np.asarray(ids).astype(np.int64)
  return label_colors(num_classes)[np.where(ids == 255, num_classes, np.clip(ids, 0, num_classes - 1))]


def save_figure(fig, out: str) -> str:
  """Lays out and writes the matplotlib figure `fig` to the PNG `out` atomically (a temp file, then a rename)."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig.tight_layout()
  tmp = f'{out}.tmp{os.getpid()}.png'
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, out)
  return out


def plot_panels(out: str, rows: list[list[tuple]], title: str, panel_size=(2.6, 1.8)) -> str:
  """A grid of panels written to the PNG `out`: `rows` of (picture, name); a picture is an (H, W, 3) image (uint8
  or floats in [0, 1]) or an (H, W) mask drawn in gray from 0 to 1; None leaves its cell empty."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  cols = max(len(r) for r in rows)
  fig, axes = plt.subplots(
      len(rows), cols, figsize=(panel_size[0] * cols, panel_size[1] * len(rows) + 0.4), dpi=120, squeeze=False
  )
  for i, row in enumerate(rows):
    for j in range(cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j >= len(row) or row[j] is None:
        ax.axis('off')
        continue
      picture, name = row[j]
      picture = np.asarray(picture)
      gray = picture.ndim == 2
      ax.imshow(picture, cmap='gray' if gray else None, vmin=0, vmax=1 if gray else None, interpolation='nearest')
      ax.set_title(name, fontsize=8)
  fig.suptitle(title, fontsize=9)
  return save_figure(fig, out)
