"""anytime_jax.curve: the PNG from anytime.json files, the paper's reference lines, the CLI's bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from anytime_jax import curve, report
from core_jax import seg_figure
from core_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_run(label, mious, gflops, fractions, workdir=''):
  exits = [
      {'exit': k + 1, 'miou': m, 'gflops': g, 'fraction': f}
      for k, (m, g, f) in enumerate(zip(mious, gflops, fractions))
  ]
  mean = {'miou': float(np.mean(mious)), 'gflops': float(np.mean(gflops)), 'fraction': float(np.mean(fractions))}
  return {'label': label, 'workdir': workdir, 'exits': exits, 'mean': mean}


def write_json(d, runs, reference=''):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, 'anytime.json'), 'w') as f:
    json.dump({'title': 'test', 'reference': reference, 'runs': runs}, f)
  return str(d)


def _png_size(path):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == b'\x89PNG\r\n\x1a\n'
  return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')


def test_plot_writes_a_png_with_reference(tmp_path):
  runs = [
      fake_run('EE+RH', [40, 55, 70, 78], [40, 100, 360, 700], [1, 1, 1, 1]),
      fake_run('ADP-C', [40, 55, 71, 80], [40, 90, 250, 380], [1, 0.8, 0.6, 0.4]),
  ]
  out = curve.plot(runs, str(tmp_path / 'c.png'), 'title', ['cityscapes_w48'])
  assert _png_size(out) == (840, 576)
  assert os.path.getsize(out) > 10_000
  assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]


def test_redraw_from_several_dirs_and_cli(tmp_path):
  a = write_json(tmp_path / 'a', [fake_run('ADP-C', [10, 20, 30, 40], [1, 2, 3, 4], [1, 0.5, 0.4, 0.3], 'a')])
  b = write_json(
      tmp_path / 'b',
      [fake_run('ADP-C', [11, 21, 31, 41], [1, 2, 3, 4], [1, 0.5, 0.4, 0.3], 'b')],
      reference='cityscapes_w18_small_v2',
  )
  out = str(tmp_path / 'both.png')
  assert curve.main([a, b, '--out', out]) == 0
  assert _png_size(out)[0] > 0
  proc = subprocess.run(
      [sys.executable, '-m', 'anytime_jax.curve', a, f'--out={tmp_path / "x.png"}'],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert os.path.isfile(tmp_path / 'x.png')


@pytest.mark.parametrize(
    'args, message',
    [
        (['{missing}', '--out', '{out}'], 'no anytime.json at'),
        (['{a}'], 'give at least one run and --out'),
        ([], 'give at least one run and --out'),  # was the usage on stdout, nothing on stderr, exit 2
        (['{a}', '--out', '{d}/x.jpg'], '--out must name a .png'),
        (['{a}', '--out', '{d}/nodir/x.png'], 'output directory does not exist'),
        (['{a}', '--out', '{out}', '--bogus'], 'unknown flag --bogus'),
    ],
)
def test_curve_cli_bad_input(tmp_path, capsys, args, message):
  a = write_json(tmp_path / 'a', [fake_run('r', [1, 2], [1, 2], [1, 1])])
  fmt = dict(missing=str(tmp_path / 'none'), out=str(tmp_path / 'o.png'), a=a, d=str(tmp_path))
  assert curve.main([x.format(**fmt) for x in args]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and '\n' not in err


def test_unknown_reference_and_bad_json(tmp_path):
  with pytest.raises(UserError, match="anytime.reference 'imagenet' is not one of"):
    curve.check_reference('imagenet')
  (tmp_path / 'anytime.json').write_text('{"runs": 3}')
  with pytest.raises(UserError, match='is not an anytime.json'):
    curve.read_anytime_json(str(tmp_path))


def test_reference_points_are_the_papers():
  ref = curve.REFERENCES['cityscapes_w48']
  assert ref['paper ADP-C (W48)'][-1] == (387.1, 81.3)
  assert ref['paper EE+RH (W48)'] == [(41.9, 44.6), (105.6, 60.2), (368.0, 76.6), (701.3, 79.9)]
  assert ref['paper HRNet-W48'] == [(696.2, 80.7)]


def test_table_and_run_entry():
  results = {'eval': {}, 'params': 123, 'step': 9, 'workdir': '/w'}
  for k, (m, g, f) in enumerate([(0.5, 1.0, 1.0), (0.6, 2.0, 0.8), (0.7, 3.0, 0.5), (0.8, 4.0, 0.25)], 1):
    results['eval'].update({f'exit{k}/miou': m, f'exit{k}/gflops': g, f'exit{k}/fraction': f})
  results['eval'].update({'mean/miou': 0.65, 'mean/gflops': 2.5, 'mean/fraction': 0.6})
  from core_jax import cli  # pylint: disable=import-outside-toplevel

  config = cli.load_config_file(os.path.join(REPO, 'configs', 'anytime', 'digit_scenes.py'))
  entry = report.run_entry(report.run_label(config), results, config)
  assert entry['label'] == 'ADP-C (tau 0.998)' and entry['tau'] == 0.998
  assert [e['miou'] for e in entry['exits']] == pytest.approx([50, 60, 70, 80])
  text = report.table([entry])
  lines = text.splitlines()
  assert lines[0].split() == ['run', 'exit1', 'exit2', 'exit3', 'exit4', 'mean']
  assert lines[2].split()[-5:] == ['50.0', '60.0', '70.0', '80.0', '65.0']
  assert lines[4].split()[-5:] == ['100.0', '80.0', '50.0', '25.0', '60.0']  # computed %
  assert lines[5].split()[-4:] == ['0.0', '20.0', '50.0', '75.0']  # skipped %


def test_plot_scene_draws_every_exit(tmp_path):
  rng = np.random.RandomState(0)
  labels = rng.randint(0, 11, (16, 32)).astype(np.uint8)
  labels[0, :4] = 255
  exits = [
      {'exit': k, 'prediction': rng.randint(0, 11, (16, 32)), 'computed': rng.rand(4, 8) < 0.5, 'fraction': 0.5}
      for k in (1, 2, 3, 4)
  ]
  image = rng.randint(0, 256, (16, 32, 3)).astype(np.uint8)
  out = report.plot_scene(str(tmp_path / 'scene.png'), image, labels, exits, 'a scene', num_classes=11)
  assert out == str(tmp_path / 'scene.png') and os.path.getsize(out) > 5_000
  assert os.listdir(tmp_path) == ['scene.png']  # written atomically: no temp file left
  colors = seg_figure.label_colors(11)
  assert colors.shape == (12, 3) and tuple(colors[0]) == (0, 0, 0) and tuple(colors[-1]) == (1, 1, 1)
  assert len({tuple(c) for c in colors}) == 12  # background, 10 digits and ignore all distinct
