"""Sparse Structure Selection's ResNet-50 variants on ImageNet: ResNet-41 / 32 / 26 (1 run each, as the paper).

Command:  python -m pruning_jax.main --config=configs/pruning/sss_imagenet.py:resnet41 --workdir=/ckpt/sss_r41 \
            --config.data.data_dir=$TFDS_DATA_DIR [--config.init_from=resnet50-19c8e357.pth]
          (ARG: resnet41, resnet32, resnet26; imagenet2012 prepared as array_record.)
Expected: top-1 % (reference sheet section 6.5): "Fine-tuned" (the SSS paper's own models, [unverified: check the
          paper]) 75.44 / 74.18 / 71.82; Scratch-E [readme] 75.70 / 73.79 / 72.31; Scratch-B [readme] 76.17 / 74.67 /
          73.41 (top-5 E 92.74 / 91.80 / 90.90, B 92.90 / 92.22 / 91.39); ResNet-50 about 76.12.
          Params / MACs (python -m pruning_jax.zoo): ResNet-41 25.36M / 3.47G, ResNet-32 14.27M / 2.82G,
          ResNet-26 14.92M / 2.28G of ResNet-50's 25.56M / 4.09G; Scratch-B int(100 x MACs ratio) = 117 / 145 / 179
          epochs, the README's, with the lr steps every int(0.3 E) epochs: 35/70/105, 43/86/129, 53/106/159.
Time:     not measured: no accelerator was available to this work. Per run 100 (large, unless init_from) + 100
          (Scratch-E) + 117-179 (Scratch-B) epochs of 5,004 steps at batch 256.

The paper trains the architectures the authors' MXNet code selected (sss=False: plain training of the kept blocks),
so the blocks are fixed here (sss.architecture; pruning_jax.methods.sss.STAGE_BLOCKS: per stage the branches kept and
whether the downsampling block keeps its own) and the prune phase cuts them from the large ResNet-50 (its kept blocks'
weights: what a fine-tune would start from). To let SSS choose the blocks instead, set sss.architecture='' and
sss.gamma > 0: the large phase then learns the block factors by the proximal gradient step.
Recipe: the MXNet one the README names: SGD 0.9, wd 1e-4, batch 256, 100 epochs, lr 0.1 / 10 at 30, 60 and 90
(Scratch-B: every int(0.3 E) epochs), the ImageNet augmentation of pytorch/examples.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

PAPER = {
    'resnet41': dict(large=76.12, finetune=75.44, scratch_e=75.70, scratch_b=76.17),
    'resnet32': dict(large=76.12, finetune=74.18, scratch_e=73.79, scratch_b=74.67),
    'resnet26': dict(large=76.12, finetune=71.82, scratch_e=72.31, scratch_b=73.41),
}


def get_config(arg: str = 'resnet41'):
  if arg not in PAPER:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(PAPER)}')
  c = recipes.imagenet_recipe(recipes.experiment_config())
  c.model.name = 'resnet50'
  c.num_epochs = 100
  c.optimizer.decay_fractions = (0.3, 0.6, 0.9)
  c.prune.method = 'sss'
  c.sss.architecture = arg
  c.scratch.equal_decay_steps = True
  c.experiment.update(
      dict(
          title=f'ResNet-50 -> SSS ResNet-{arg[6:]} (ImageNet)',
          seeds=(0,),
          phases=('large', 'prune', 'scratch_e', 'scratch_b'),
          paper=PAPER[arg],
      )
  )
  return c
