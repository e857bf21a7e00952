"""ConvNeXt on the embedded `digits` dataset (1,437 train / 360 test real handwritten digits, 32x32).

Command:  python -m convnext_jax.main --config=configs/convnext/digits.py --workdir=/tmp/convnext_digits
Expected: >= 97% test accuracy (measured: see README "Results"; an SVM reaches ~98% on this data).
Time:     1 min 45 s wall, 1 min 4 s CPU time in `make demo` on a fresh clone at 3f441db with cold caches, the idle
          2-core CPU shared with the demo's two other jobs (side by side; its last line prints wall and CPU time);
          about 1-1.5 minutes alone on an idle 2-core CPU.
Every generic loop option (init_from, eval_only, checkpoint.restore_step, ...) comes from core_jax.config.
"""

from core_jax.config import base_config


def get_config():
  c = base_config()
  c.seed = 0
  c.data.update(
      dict(
          name='digits',
          data_dir=None,
          train_split='train',
          eval_split='test',
          worker_count=0,
          train_transforms=('random_crop(size=32, padding=2)', 'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))'),
          eval_transforms=('normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))',),
      )
  )
  c.model.update(dict(name='convnext_digits', drop_path_rate=0.1))
  c.compute_dtype = 'float32'
  c.batch_size = 64
  c.eval_batch_size = 120
  c.num_epochs = 15
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.label_smoothing = 0.1
  c.optimizer.update(
      dict(
          name='adamw',
          lr=4e-3,
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.05,
          wd_exclude_1d=True,
          schedule='cosine',
          warmup_epochs=2,
          warmup_init_lr=0.0,
          min_lr=1e-6,
          grad_clip_norm=0.0,
          ema_decay=0.0,
          accumulate_steps=1,
      )
  )
  c.log_every_steps = 50
  c.eval_every_epochs = 5
  c.checkpoint.update(dict(every_steps=200, keep=3, keep_best=True, asynchronous=True))
  return c
