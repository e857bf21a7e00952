"""Unstructured magnitude pruning (Han et al. 2015) on ImageNet: ResNet-50 at 30% and 60% (1 run, as the paper).

Command:  python -m pruning_jax.main --config=configs/pruning/magnitude_imagenet.py:resnet50_60 \
            --workdir=/ckpt/mag_resnet50_60 --config.data.data_dir=$TFDS_DATA_DIR   (ARG: resnet50_30 | resnet50_60)
Expected: top-1 % (top-5) (reference sheet section 6.6, [readme]); unpruned about 76.15 [unverified]:
            ResNet-50  30%: FT 76.06 (92.88)  Scratch-E 74.77 (92.19)  Scratch-B 75.60 (92.75)
                       60%: FT 76.09 (92.91)  Scratch-E 73.69 (91.61)  Scratch-B 74.90 (92.28)
          The paper's VGG-16-BN rows (30%: 73.68 / 72.75 / 74.02, 60%: 73.63 / 71.50 / 73.42) need torchvision's
          vgg16_bn, which this zoo has not got: no config for them yet.
Time:     not measured: no accelerator was available to this work. 90 + 10 (fine-tune) + 90 + Scratch-B epochs
          of 5,004 steps at batch 256; Scratch-B = int(90 x dense / non-zero MACs), no cap (as the original's
          weight-level main_B).

Model: the zoo's ResNet-50 (torchvision layout with the ThiNet / regression code's bias on the downsample conv);
the paper starts from torchvision's pretrained resnet50: pass it with --config.init_from=resnet50.pth (the large
phase then only evaluates it). Recipe: the ImageNet protocol; the global |w| threshold over every conv weight;
fine-tune 10 epochs at 0.001 (the original's default); Scratch-E / Scratch-B re-draw each conv as
Normal(0, sqrt(2 / n)), n = nnz / in_channels, under the mask. The Scratch-B budget counts the non-zero conv
weights after the mask is applied (the original main_B.py computes it before loading the pruned model).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')

PAPER = {
    30: dict(large='76.15 [unverified]', finetune=76.06, scratch_e=74.77, scratch_b=75.60),
    60: dict(large='76.15 [unverified]', finetune=76.09, scratch_e=73.69, scratch_b=74.90),
}


def get_config(arg: str = 'resnet50_30'):
  experiments = {f'resnet50_{p}': p for p in PAPER}
  if arg not in experiments:
    raise ValueError(f'experiment {arg!r}: expected one of {", ".join(experiments)}')
  percent = experiments[arg]
  c = recipes.imagenet_recipe(recipes.experiment_config())
  c.model.name = 'resnet50'
  c.prune.update(dict(method='magnitude', percent=percent / 100))
  c.finetune.update(dict(num_epochs=10, lr=0.001))
  c.experiment.update(
      dict(title=f'ResNet-50, unstructured magnitude pruning {percent}% (ImageNet)', seeds=(0,), paper=PAPER[percent])
  )
  return c
