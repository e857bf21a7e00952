"""Network Slimming on ImageNet: VGG-11 (BN), 50% of the channels, the mask implementation (1 run, as the paper).

Command:  python -m pruning_jax.main --config=configs/pruning/slimming_imagenet.py --workdir=/ckpt/slim_vgg11 \
            --config.data.data_dir=$TFDS_DATA_DIR
Expected: top-1 % (reference sheet section 6.4, [readme]): unpruned 70.84, fine-tuned 68.62, Scratch-E 70.00,
          Scratch-B 71.18 (top-5 88.77 / 89.33 / 90.08).
Time:     not measured: no accelerator was available to this work. 90 (sparsity training) + 5 (fine-tune) + 90
          + Scratch-B epochs of 5,004 steps at batch 256.

Recipe: the ImageNet protocol with sparsity training s = 1e-5 on every BN scale (BN2d and the head's BN1d);
the global threshold at 50%; the fine-tune runs on the large shape with the pruned channels' weights and BN
scale / bias zeroed and held at 0 by the update mask (prune.mode='mask', as the original's BN_grad_zero); the
scratch runs train the physically smaller model; Scratch-B int(90 x MACs ratio) epochs, no cap (as the
original's slimming main_B). Beware [issue #30]: a threshold over the FC BN1d layers can empty a whole FC
layer; here that layer keeps its strongest channel and the run says so (prune.on_empty_layer=error stops).
"""

from core_jax.config import load_sibling

recipes = load_sibling(__file__, '_recipes.py')


def get_config():
  c = recipes.imagenet_recipe(recipes.experiment_config())
  c.model.name = 'vgg11_bn_imagenet'
  c.sparsity.s = 1e-5
  c.prune.update(dict(method='slimming', percent=0.5, mode='mask'))
  c.finetune.update(dict(num_epochs=5, lr=0.001))
  c.experiment.update(
      dict(
          title='VGG-11, Network Slimming 50% (ImageNet, mask implementation)',
          seeds=(0,),
          paper=dict(large=70.84, finetune=68.62, scratch_e=70.00, scratch_b=71.18),
      )
  )
  return c
