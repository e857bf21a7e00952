"""The paper's question asked of a modern ConvNet: the demo's ConvNeXt on `digits`, every traced channel group
halved by group-L1 (pruning_jax.structured), then Fine-tuned vs Scratch-E vs Scratch-B through the same runner.

Command:  python -m pruning_jax.main --config=configs/pruning/digits_convnext.py --workdir=/tmp/pruning_digits_convnext
Printed:  the paper's table (unpruned, pruned, Fine-tuned, Scratch-E, Scratch-B) and the pruned layer widths.
Measured: accuracy (%) unpruned 96.94 | pruned 92.22 | Fine-tuned 95.83 | Scratch-E 96.67 | Scratch-B 98.89 (12
          epochs); params 1.18M -> 306.2K (-74.0%), MACs 15.21M -> 4.07M (-73.3%); one seed, 360 test digits.
Time:     10.1 min CPU time (user + system) in all, 52 min wall on 2 CPU cores shared at load 15-50 (other
          engineers' jobs): the large phase (2.7 min CPU, 14.5 min wall) and the rest (7.4 min CPU, 37.5 min wall)
          ran as two invocations of the command, the second resuming the first's workdir.

ConvNeXt `convnext_digits` (depths 1/1/3/1, widths 32/64/128/256, patch 2, drop path 0.1) trained 6 epochs with the
demo's recipe (AdamW 4e-3, wd 0.05 without 1-D params, cosine with 1 warmup epoch, label smoothing 0.1, pad-2
crop). Pruned: ratio 0.5 of every prunable group the tracer finds (the four stage widths with their LayerNorms,
downsampling convs, depthwise convs and layer scales, and each block's MLP hidden width), channels ranked by the
L1 norm of all their weights summed over the group's members (Torch-Pruning's group norm); fine-tune 2 epochs at a
constant 4e-4; Scratch-E 6 epochs; Scratch-B 6 x MACs ratio, capped at 2x (12 epochs). One seed; each phase
evaluates once, at its end.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')
digits = load_sibling(__file__, 'digits_l1.py')
convnext_demo = load_sibling(__file__, '../convnext/digits.py')


def get_config():
  c = digits.digits_recipe(recipes.experiment_config(), epochs=6)
  c.model.update(dict(name='convnext_digits', cfg=None))
  c.compute_dtype = 'float32'
  c.label_smoothing = 0.1
  # the ConvNeXt demo's AdamW recipe (configs/convnext/digits.py), its warmup scaled to the shorter run
  c.optimizer.update(convnext_demo.get_config().optimizer.to_dict())
  c.optimizer.update(dict(warmup_epochs=1.0, decay_fractions=(), decay_epochs=()))
  c.finetune.update(dict(num_epochs=2, lr=4e-4))
  c.scratch.budget_cap = 2.0  # Scratch-B at most 12 epochs, as the paper caps ImageNet L1's: keeps the demo short
  c.prune.update(dict(method='graph', ratio=0.5, criterion='l1', scope='layer', min_width=1))
  c.experiment.seeds = (0,)
  c.experiment.title = 'ConvNeXt (digits) -> group-L1 50% of every traced channel group'
  return c
