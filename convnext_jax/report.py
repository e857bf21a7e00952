"""The ConvNeXt line's report: the model-zoo tables (params and GMACs of the ImageNet models and the UperNet
segmentors, as Markdown or JSON: `python -m convnext_jax.zoo`, which counts them), and the UperNet digit_scenes
demo's table and WORKDIR/scene.png (`python -m convnext_jax.upernet_demo`, which runs the model for them)."""

import json

from core_jax import seg_figure

# The UperNet zoo's input sizes (H x W, as mmseg's `get_flops --shape 2048 512`): convnext_jax.zoo counts at each.
UPERNET_SIZES: tuple[tuple[int, int], ...] = ((2048, 512), (2560, 640))
ANYTIME_ROW = 'ADP-C HRNet w8_nano, exit 4 (anytime demo, README)'
SCENE_PNG = 'scene.png'


def _fmt(v: float | None) -> str:
  return '—' if v is None else str(v)


def format_markdown(rows: list) -> str:
  """The ImageNet zoo table (rows of convnext_jax.zoo.zoo_table)."""
  lines = [
      '| model | params | GMACs @224 | GMACs @384 | ref. IN-1K top-1 @224 | ref. @384 | reference source |',
      '|---|---:|---:|---:|---:|---:|---|',
  ]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['params']:,} | {r['gmacs_224']:.2f} | {r['gmacs_384']:.2f} | "
        f"{_fmt(r['ref_top1_224'])} | {_fmt(r['ref_top1_384'])} | {r['ref_source']} |"
    )
  lines.append('')
  lines.append(
      'Params (1000-class head) and GMACs are computed from the Flax models (`python -m convnext_jax.zoo`); '
      'top-1 columns are reference numbers from the paper / timm, not measured here.'
  )
  return '\n'.join(lines)


def format_upernet_markdown(rows: list) -> str:
  """The UperNet zoo table (rows of convnext_jax.zoo.upernet_table)."""
  sizes = ['x'.join(map(str, s)) for s in UPERNET_SIZES]
  lines = [
      '| model | params | params w/o aux head | '
      + ' | '.join(f'GMACs @{s}' for s in sizes)
      + ' | paper: params, GFLOPs |',
      '|---|---:|---:|' + '---:|' * len(sizes) + '---|',
  ]
  for r in rows:
    macs = ' | '.join(f"{r[f'gmacs_{s}']:.2f}" for s in sizes)
    lines.append(
        f"| {r['model']} | {r['params']:,} | {r['params_no_aux']:,} | {macs} | "
        f"{r['paper_params_m']}M, {r['paper_gflops']}G @{r['paper_input']} |"
    )
  lines.append('')
  lines.append(
      'UperNet (150 classes): GMACs of the backbone and decode head for one H x W image (the auxiliary head runs in '
      "training only); the paper's FLOPs are mmcv's count of the same, which adds biases, ReLUs and pooling."
  )
  return '\n'.join(lines)


def zoo_text(rows: list, seg_rows: list, as_json: bool = False) -> str:
  """What `python -m convnext_jax.zoo` prints: both tables (those with rows) as Markdown, or their rows as JSON (a
  list of the ImageNet rows when there are no UperNet ones)."""
  if as_json:
    return json.dumps(dict(imagenet=rows, upernet=seg_rows) if seg_rows else rows, indent=1)
  tables = ([format_markdown(rows)] if rows else []) + ([format_upernet_markdown(seg_rows)] if seg_rows else [])
  return '\n\n'.join(tables)


def upernet_demo_table(results: dict, params: int, anytime_miou: float | None, background_miou: float) -> str:
  """The UperNet demo's table (mIoU in %); `anytime_miou` None (no anytime demo run): that row shows '-' and a
  note follows."""
  rows = [
      ('model (digit_scenes validation, 200 scenes)', 'mIoU %', 'pixel acc. %'),
      (
          f'ConvNeXt + UperNet (this run, {params:,} params)',
          f'{100 * results["miou"]:.1f}',
          f'{100 * results["pixel_accuracy"]:.1f}',
      ),
      (ANYTIME_ROW, '-' if anytime_miou is None else f'{anytime_miou:.1f}', '-'),
      ('background everywhere', f'{background_miou:.1f}', '-'),
  ]
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  text = '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
  if anytime_miou is None:
    text += '\n(no anytime demo numbers beside this workdir: run `make demo LINE=anytime` for the ADP-C row)'
  return text


def plot_scenes(out: str, scenes: list[tuple[int, dict, object, object]], num_classes: int, title: str) -> str:
  """Draws `out` (the demo's scene.png): one row per (index, raw example, labels, prediction): the input, its
  labels, the prediction (core_jax.seg_figure, as the anytime line's scene)."""
  rows = [
      [
          (raw['image'], f'scene {i}: input'),
          (seg_figure.paint(labels, num_classes), 'labels'),
          (seg_figure.paint(pred, num_classes), 'prediction'),
      ]
      for i, raw, labels, pred in scenes
  ]
  return seg_figure.plot_panels(out, rows, title, panel_size=(2.8, 1.6))
