"""The paper's question asked of a modern ConvNet, unstructured: the demo's ConvNeXt on `digits` (digits_convnext.py's
model and recipe), 80% of its conv weights removed by one global magnitude threshold, then Fine-tuned vs Scratch-E
vs Scratch-B through the same runner.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_convnext_magnitude.py \
            --workdir=/tmp/pruning_digits_convnext_mag [--config.init_from=WORKDIR_OF_digits_convnext/seed0/large]
Printed:  the paper's table (unpruned, pruned, Fine-tuned, Scratch-E, Scratch-B) and the non-zero params and MACs.
Measured: with --config.init_from=the large phase of digits_convnext.py's run (the same trained model; `make
          demo-pruning-convnext` does this): accuracy (%) unpruned 96.94 | pruned 61.39 | Fine-tuned 95.56 |
          Scratch-E 96.67 | Scratch-B 98.06 (12 epochs); non-zero params 1.18M -> 244.1K (-79.3%), non-zero MACs
          15.21M -> 3.56M (-76.6%); one seed, 360 test digits.
Time:     11.1 min CPU time (user + system), 51.6 min wall on 2 CPU cores shared at load 15-50 (other engineers'
          jobs), the large phase only evaluating the given weights.

ConvNeXt `convnext_digits` trained as in digits_convnext.py (6 epochs, the demo's AdamW recipe). Pruned: one global
|w| threshold over every conv weight (stem, downsampling and depthwise convs, and each block's pointwise convs
pwconv1 / pwconv2, which ConvNeXt writes as Linear layers; the classifier, LayerNorms, layer scales and biases are
kept), the mask held exactly through fine-tuning (2 epochs at a constant 4e-4) and the scratch runs. Scratch-E /
Scratch-B start from the model's own fresh init under the mask (scratch.init='model': ConvNeXt's truncated normal
of std 0.02 does not depend on the fan-in, so the paper's sparse He re-draw has no counterpart); Scratch-B trains
6 x the ratio of dense to non-zero MACs epochs, capped at 2x (12 epochs). One seed.
"""

from core_jax.config import load_sibling

digits_convnext = load_sibling(__file__, 'digits_convnext.py')


def get_config():
  c = digits_convnext.get_config()
  c.prune.update(dict(method='magnitude', percent=0.8))
  c.scratch.update(dict(budget_cap=2.0, init='model'))
  c.experiment.title = 'ConvNeXt (digits) -> unstructured magnitude pruning 80% of the conv weights'
  return c
