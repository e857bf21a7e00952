"""ConvNeXt-T/S/B/L/XL pre-training on ImageNet-22K (paper Table 5; official TRAINING.md).

Command:  python -m convnext_jax.main --config=configs/convnext/in22k.py:base --workdir=/ckpt/convnext_b_22k \
            --config.data.name=image_folder:/data/imagenet22k [--config.optimizer.accumulate_steps=K]
          (an image-folder tree, one folder per class (21841 WordNet ids, sorted = official class order);
          prepared once into array_record under data_dir, see core_jax/data/image_folder.py.)
Expected: no paper number for the pre-training itself (22K has no official val split; eval here runs on
          the first 10,000 training images as a sanity monitor). Its value is the fine-tuned 22K->1K top-1
          (finetune.py): T 82.9, S 84.6, B 85.8, L 86.6, XL 87.0 at 224.
Time:     not measured here. ~14.2M images x 90 epochs = 1.28B images; with training at ~1/3 of the paper's
          A100 inference throughput that is roughly T 2.8, S 4.2, B 5.5, L 8.7 days on 8x A100 (XL ~12 days);
          the paper used 128 GPUs (16 nodes x 8 x batch 32).

Same as in1k.py except: 90 epochs, 5 warmup, no EMA, 21841 classes (from the folder), drop path
T/S/B/L/XL 0.0/0.0/0.1/0.1/0.2.
"""

import os

from core_jax.config import load_sibling

in1k = load_sibling(__file__, 'in1k.py')

DROP_PATH = {'tiny': 0.0, 'small': 0.0, 'base': 0.1, 'large': 0.1, 'xlarge': 0.2}
NUM_CLASSES = 21841


def get_config(arg: str = 'base'):
  size = in1k._size(arg, tuple(DROP_PATH))  # pylint: disable=protected-access
  c = in1k.base_config(size)
  c.data.name = 'image_folder:' + os.environ.get('IMAGENET22K_DIR', '/data/imagenet22k')
  c.data.train_split = 'train'
  c.data.eval_split = 'train[:10000]'  # monitor only: ImageNet-22K has no held-out split
  c.model.drop_path_rate = DROP_PATH[size]
  c.num_epochs = 90
  c.optimizer.warmup_epochs = 5
  c.optimizer.ema_decay = 0.0
  c.eval_every_epochs = 5
  c.checkpoint.every_steps = 2000
  c.expected_num_classes = NUM_CLASSES
  return c
