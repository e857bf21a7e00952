"""The paper's question asked of ConvNeXt-T on ImageNet: fine-tune the pruned model, or train it from scratch?
ARG 'l1': every traced channel group halved by group-L1 (pruning_jax.structured); 'magnitude': 60% of the conv
weights removed by one global magnitude threshold. Fine-tuned vs Scratch-E vs Scratch-B through the same runner.

Command:  python -m pruning_jax.main --config=configs/pruning/convnext_tiny_imagenet.py:l1 --workdir=/ckpt/cnx_t_l1 \
            --config.data.data_dir=$TFDS_DATA_DIR   (ARG: l1 | magnitude; imagenet2012 prepared as array_record;
            --config.optimizer.accumulate_steps=K reaches the batch of 4096 on fewer devices)
Measured: not measured: no accelerator was available to this work. The question no published run answers: does a
          ConvNeXt-T pruned to half its channels (params 28.59M -> 7.44M, MACs 4.456G -> 1.144G, measured by
          pruning_jax.prune) reach a higher top-1 fine-tuned from the trained model (30 epochs) or trained from
          scratch for the large model's 300 epochs (Scratch-E) or for the same compute (Scratch-B, capped at 2x:
          600 epochs)? And the same of the 60%-sparse model (unstructured, the dense shape under a mask)? The
          paper's answer for ResNets and VGGs (scratch matches or beats fine-tuning, section 4) is the hypothesis;
          ConvNeXt-T's own top-1 is 82.1 (ConvNeXt paper, 300 epochs).
Time:     not measured. 300 (large) + 30 (fine-tune) + 300 (Scratch-E) + 600 (Scratch-B) epochs of 313 steps at batch
          4096; configs/convnext/in1k.py extrapolates ConvNeXt-T's 300 epochs to about 20 h on 8x A100.

Recipe (configs/convnext/in1k.py:tiny, the ConvNeXt paper's): AdamW 4e-3 at batch 4096, wd 0.05 (none on 1-D
params), 20 warmup epochs, cosine to 1e-6, RandAugment, Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing
0.25, drop path 0.1, EMA 0.9999 (evaluated alongside), 300 epochs. Fine-tune: 30 epochs at a constant 5e-5 (the
ConvNeXt paper's fine-tuning length and lr, ImageNet-22K -> 1K, our choice: the paper's SGD 0.001 has no AdamW
counterpart). Structured: ratio 0.5 of every prunable traced group (the four stage widths with their LayerNorms,
downsampling convs, depthwise convs and layer scales, and each block's MLP hidden width), channels ranked by the
group's L1 norm (Torch-Pruning's group norm). Unstructured: the global |w| threshold over every conv weight (stem,
downsampling, depthwise and the pointwise pwconv1 / pwconv2), Scratch-E / B from the model's own init under the
mask. One seed, as the paper's ImageNet runs.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')
in1k = load_sibling(__file__, '../convnext/in1k.py')

METHODS = {
    'l1': dict(method='graph', ratio=0.5, criterion='l1', scope='layer', min_width=1),
    'magnitude': dict(method='magnitude', percent=0.6),
}


def get_config(arg: str = 'l1'):
  if arg not in METHODS:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(METHODS)}')
  c = recipes.experiment_config()
  recipe = in1k.base_config('tiny')
  for field in ('data', 'optimizer', 'mixup', 'checkpoint'):
    c[field] = recipe[field]
  for field in ('compute_dtype', 'batch_size', 'eval_batch_size', 'num_epochs', 'label_smoothing', 'log_every_steps'):
    c[field] = recipe[field]
  c.checkpoint.keep_best = False  # every phase hands on its final weights
  c.eval_every_epochs = 10.0
  c.model.update(dict(name='convnext_tiny', cfg=None))
  c.finetune.update(dict(num_epochs=30, lr=5e-5))
  c.prune.update(METHODS[arg])
  c.scratch.update(dict(budget_cap=2.0, init='model'))
  c.experiment.update(dict(title=f'ConvNeXt-T (ImageNet) -> {arg}', seeds=(0,)))
  return c
