"""L1-norm filter pruning on ImageNet: ResNet-34 -> ResNet-34-A / ResNet-34-B (1 run each, as the paper).

Command:  python -m pruning_jax.main --config=configs/pruning/l1_imagenet.py:resnet34_a --workdir=/ckpt/l1_r34a \
            --config.data.data_dir=$TFDS_DATA_DIR [--config.init_from=resnet34-333f7ec4.pth]
          (ARG: resnet34_a, resnet34_b; imagenet2012 prepared as array_record. The paper prunes torchvision's
          trained ResNet-34: pass its checkpoint as init_from and the large phase only evaluates it.)
Expected: top-1 % (reference sheet section 6.1, [readme]): unpruned 73.31; ResNet-34-A FT 72.56, Scratch-E 72.77,
          Scratch-B 73.08; ResNet-34-B FT 72.29, E 72.55, B 72.84 (top-5 A 90.99 / 91.20 / 91.29, B 90.72 / 91.07
          / 91.19). Params / MACs pruned: A 7.6% / 15.4%, B 10.7% / 24.1%; Scratch-B about 106 / 118 epochs.
Time:     not measured: no accelerator was available to this work. Per run 90 (large, unless init_from) + 20
          (fine-tune) + 90 (Scratch-E) + ~106-118 (Scratch-B) epochs of 5,004 steps at batch 256; ResNet-34 is 3.66G
          MACs per image.

Recipe (pytorch/examples 0.3.1): SGD 0.9, wd 1e-4, batch 256, 90 epochs, lr 0.1 / 10 every 30 epochs;
RandomResizedCrop 224 + flip, eval resize 256 + center crop 224; fine-tune 20 epochs at lr 0.001; Scratch-B
int(90 x MACs ratio) epochs, capped at 2x (180), decays at thirds of the run.
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

PAPER = {
    'resnet34_a': dict(large=73.31, finetune=72.56, scratch_e=72.77, scratch_b=73.08),
    'resnet34_b': dict(large=73.31, finetune=72.29, scratch_e=72.55, scratch_b=72.84),
}


def get_config(arg: str = 'resnet34_a'):
  if arg not in PAPER:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(PAPER)}')
  c = recipes.imagenet_recipe(recipes.experiment_config())
  c.model.name = 'resnet34'
  c.prune.update(dict(method='l1_norm', scheme=arg))
  c.finetune.update(dict(num_epochs=20, lr=0.001))
  c.scratch.budget_cap = 2.0
  c.experiment.update(
      dict(title=f'ResNet-34 -> ResNet-34-{arg[-1].upper()} (L1-norm, ImageNet)', seeds=(0,), paper=PAPER[arg])
  )
  return c
