"""ADP-C end to end on the embedded digit_scenes (a small HRNet on CPU): its per-exit accuracy and cost at several
confidence thresholds.

Command:  python -m anytime_jax.main --config=configs/anytime/digit_scenes.py --workdir=/tmp/anytime_digits
Phases (sub-workdirs of WORKDIR, core_jax.experiment: a rerun skips finished phases and resumes a killed one):
  adp_c              EE+RH+CA at model.tau 0.998, trained with the masks as in the reference
  adp_c_tau<t>       eval-only runs of the adp_c weights at each of anytime.eval_taus (no retraining): here 0.99;
                     `--config.anytime.eval_taus=(1.0, 0.99)` adds tau 1, which computes every pixel (the EE+RH
                     network's dense cost with these weights, ~10 s more; every run's anytime.json entry holds
                     that dense cost as gflops_dense)
  (--config.anytime.baseline_exit_type=rh also trains a separate EE+RH model first, the paper's EE+RH row)
Writes WORKDIR/anytime.json (per run and exit: mIoU, GFLOPs, fraction computed), WORKDIR/anytime.png
(the anytime curve) and WORKDIR/scene.png (one validation scene: the input, its labels, each exit's prediction and
the mask of the pixels each exit computed; anytime_jax.job.scene_figure), and prints the table.
Model: 'w8_nano' (branch widths 8/16/32/64, a 16-channel stem, one module per stage, one block per branch; not
from the paper) with RH exits of one down step each (model.rh_max_depth 1: an 8x16 grid on a 64x128 scene) and
32 inter channels, 11 classes, trained on 64x64 crops of the 64x128 scenes rescaled by 0.75-1.25 (batch 8, 375
steps), background pixels weighted 0.1 in the loss, evaluated on the 200 validation scenes (held-out handwriting)
at full size, masked-dense (compute.masked_conv below).
Why not the Cityscapes recipe (SGD, N(0, 0.001) kernels, BN momentum 0.99, 32x64 crops + flip, 3 epochs: every
pixel was predicted background, mIoU 8.4% at every exit with lr 0.1 or 0.01, also with train-mode BN; 12-14%
at exit 4 with He kernels, AdamW or class weights at that length): the reference starts from ImageNet weights,
this job from scratch in a few hundred steps. Measured on the same data: N(0, 0.001) kernels under BN get updates
of 1-70x their norm per step; at BN momentum 0.99 the running statistics lag (eval-mode mIoU 39.5% vs train-mode
84.5% on a fitted batch);
digit identity is what takes the epochs (exit-4 mIoU 15% after 3 epochs, 29% after 8 on w8_nano without CA).
Result (measured, 375 steps; exit 1..4 mIoU %, exit-4 GFLOPs per image; background-only is 8.4 at every exit; the
dense exit-4 cost is 0.0227):
  ADP-C tau 0.998  16.5 / 19.8 / 21.4 / 21.4   0.0220  (exit 4 computes 92.9% of the pixels)
  ADP-C tau 0.99   16.5 / 19.3 / 19.6 / 20.0   0.0119  (29.1%: exit 1 is sure of most of the background)
  Every exit learns: exit 1 is 8 points above background-only, exits 1 < 2 < 3 rise, exit 4 ties exit 3 at 0.998
  (within one run's noise: below) and leads it at 0.99, where exit 4 costs 52% of the dense GFLOPs (54% of
  0.998's) for 1.4 points less. Until the banded fill (Time, below) this recipe printed 16.5 / 20.0 / 21.4 / 21.4
  (0.0221, 93.6%) and 16.5 / 19.5 / 19.6 / 20.4 (0.0120, 29.2%), and at tau 1 16.5 / 20.0 / 21.9 / 21.5: the
  fill's float32 rounding changed, 375 steps amplify it by up to 0.4 points.
  The lever, measured one change at a time from the previous recipe (RH depths 3 / 2 / 1, inter channels 16:
  8.4 / 12.4 / 13.8 / 18.6, exit 4 computing 99.2% at 0.998 and 72.7% at 0.99), exit 1..4 mIoU % at tau 0.998,
  CPU time of the job at load 2-10 (2026-12-05; the last three rows evaluated one threshold more, ~10 s):
    rh_max_depth 2 (depths 2 / 2 / 1)                          10.6 / 12.1 / 12.9 / 19.3  3 min 25 s
    rh_max_depth 1 (1 / 1 / 1)                                 16.5 / 18.0 / 13.8 / 21.8  3 min 8 s
      the same, seed 1                                         11.7 / 15.2 / 15.3 / 18.9  2 min 56 s
      with exit weights 0.5 / 0.5 / 1 / 1                      14.7 / 16.4 / 15.1 / 20.8  2 min 51 s
      with inter channels 24                                   15.7 / 16.4 / 19.4 / 19.2  2 min 32 s
      with inter channels 32 (this config)                     16.5 / 20.0 / 21.4 / 21.4  2 min 54 s
      inter 32, exit weights 1 / 1 / 1 / 2                     16.5 / 16.4 / 15.9 / 18.4  2 min 50 s
      inter 32, exit weights 0.5 / 0.5 / 1 / 1                 15.3 / 15.3 / 17.2 / 17.7  2 min 55 s
      inter 32, seed 1                                         15.0 / 15.1 / 15.9 / 16.0  3 min 9 s
  CPU time against the previous recipe, one job at a time, back to back at load 3-5: 3 min 16 s (this config, 3
  min 40 s wall) and 3 min 33 s (3 min 1 s wall); earlier in the same hour 3 min 42 s at load 6.
  Why the depth: an RH exit k average-pools 4 - k times from 1/4 (the paper's, for 1024x2048 inputs, where exit 1's
  three pools leave a 32x64 grid); on a 64x128 scene the same pools leave 2x4 for exit 1 and 4x8 for exit 2, coarser
  than a 16-40 px digit, and exit 1 predicted background everywhere. One down step (8x16 cells of 8x8 px) still widens
  the exits' view beyond the 1x1 head but keeps a digit several cells wide. Exit 3 then lagged exit 2 (13.8 vs 18.0)
  with a 16-channel bottleneck for its 56 input channels (exit 2: 24); 32 lifted it to 21.4. Exit weights did not help
  (above). From seed to seed (0 and 1) one exit's mIoU moves by up to 5 points, so the order of two exits 1 point
  apart is not a property of the recipe; with seed 1 this config rises by 0.1-0.8 points per exit from exit 1's 15.0.
  Earlier tries (batch 16, older recipe, load 25-50): EE exits (1/4 resolution) put every exit above background-only
  but level (13.9 / 12.6 / 12.6 / 13.9, 248 steps; 14.3 / 14.2 / 15.3 / 14.7 with the background weight 0.1, 124
  steps); the background weight 1 instead of 0.1 left exits 1 and 2 at background-only (8.4 / 9.6 / 10.3 / 13.2);
  0.03, 8.6 / 13.7 / 12.6 / 13.6.
Time:     1 min 45 s wall, 1 min 44 s CPU time at load 4-5, run as `make demo-anytime` runs it (fresh workdir, default
          threads) right after the job before these two changes: 3 min 10 s wall, 2 min 32 s CPU time (the job's last
          line prints wall and CPU time; 2026-12-05); a second such pair at load 5-6: 3 min 56 s wall, 2 min 49 s CPU
          before, 1 min 58 s wall, 2 min 6 s CPU after (the same table): 25-32% less CPU time, about half the wall time.
          In `make demo` (fresh clone at e15330e, the idle machine, beside the demo's other two jobs): 2 min 39 s
          wall, 2 min 5 s CPU time; the job before these changes, run right after the same way: 3 min 21 s, 2 min 41 s.
          The changes: (1) the RBF fill is one matmul per side with the banded tap matrix on sides of at most 32 pixels
          (confidence.rbf_fill; the same values to float32 rounding): the fill's slices were most of the train step's
          ops, and measured alone at load ~5 the step compiled in 24.6 s of CPU instead of 39.5 s and ran in 0.09 s of
          CPU instead of 0.16 s (with the slices and tau 1 still evaluated: 2 min 4 s CPU); (2) tau 1 is not evaluated
          (~10 s: an eval-only phase). Tried and not kept (2026-12-05, load 5-7): 250 steps at lr 4e-3 (slice fill, tau
          0.99 only) 15.1 / 17.1 / 17.1 / 17.8 at 0.998 in 2 min 25 s CPU against 2 min 51 s for this recipe then; 300
          steps (banded fill) 14.6 / 17.2 / 17.9 / 17.5, exit 4 computing 98.8% at 0.998 and 57.1% at 0.99; XLA's
          xla_llvm_disable_expensive_passes on the train step, 47 s of compile against 42 s without. Where the rest goes
          (a 5-step job at load ~5, slice fill): fixed cost about 105 s of CPU: imports (TensorFlow through clu's
          TensorBoard writer ~4 s), building data and model, the initializer (compiled at -O0), the train and eval
          steps' compiles, tracing the model for the train step, the eval step, the FLOP count and scene.png (~2-6 s
          each), the checkpoint's finite check and scene.png's forward compiled at -O0 (a few s each), one pass over the
          200 validation scenes 3.5 s.
          Earlier (the previous recipe, piece by piece at load ~16): compiling the masked 4-exit train step 80 s at
          XLA's default LLVM -O2, 58 s at -O1 (same step time; -O0 compiles in 45 s but steps take 3x as long), hence
          `xla_compiler_options` below; compiling the eval step 10-27 s (on a second thread beside the train step's
          compile: `compile_eval_ahead`); each eval-only threshold ~10 s (the threshold is an argument of the
          compiled eval step and the compiled programs are kept in WORKDIR/xla_cache: it compiles nothing, not even
          an initializer: the checkpoint's weights go into a state of zeros).
"""

import os

from core_jax.config import load_sibling

_base = load_sibling(__file__, '_base.py')

NORMALIZE = 'normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))'


def get_config():
  c = _base.anytime_config()
  c.model.update(
      dict(
          arch='w8_nano',  # w8_tiny's 64-ch stem and 256-ch layer1 are 2/3 of its cost: more epochs per minute
          exits=(1, 2, 3, 4),
          exit_type='rh',
          # the paper's RH exit k pools 4 - k times from 1/4 (Cityscapes' 1024x2048: exit 1 at a 32x64 grid); on a
          # 64x128 scene three pools leave 2x4, coarser than a digit, and exit 1 predicted background everywhere
          # (8.4%): one down step each (an 8x16 grid) lifts exit 1 to 16.5% (header)
          rh_max_depth=1,
          # w8_nano's 16 squeezed exit 3's 56 input channels to 16 (13.8%, below exit 2); W18's ratio of inter to
          # head channels (64 / 270) on w8_nano's 120 is 28, rounded to 32 (header)
          inter_channels=32,
          confidence_adaptive=True,
          tau=0.998,
          # from scratch, not from ImageNet: N(0, 0.001) kernels under BN make every SGD/Adam step change them by
          # 1-70x their norm (measured |grad| / |w| at init), He kernels train
          conv_init='he',
          # BN running stats after a few hundred steps: at the reference's 0.99 eval-mode mIoU was half the
          # train-mode one (39.5% vs 84.5% on a fitted batch); 0.9 (PyTorch 0.1, as HRNet-OCR / pose) converges
          bn_momentum=0.9,
      )
  )
  # one training run (ADP-C, CA active in training as in the reference), then its weights at a lower threshold:
  # at 0.99 exit 1 is sure of most of the background and exit 4 computes 29% of the pixels (at the training's
  # 0.998, 93%). Tau 1.0 (every pixel: the EE+RH network's dense cost) is left out, ~10 s of the job: its GFLOPs
  # are every run's gflops_dense in anytime.json; its mIoU was within 0.6 points of 0.998's (header)
  c.anytime.update(dict(eval_taus=(0.99,), baseline_exit_type=''))
  c.data.update(
      dict(
          name='digit_scenes',
          data_dir=os.environ.get('TFDS_DATA_DIR', ''),
          train_split='train',
          eval_split='validation',
          # full-height crops (a 32x64 crop cuts most 16-40 px digits; 64x64 halves the step's cost against whole
          # 64x128 scenes), rescaled; no flip: a mirrored digit is another shape to learn, and the validation
          # digits are never mirrored
          train_transforms=('seg_random_scale_crop(size=(64, 64), factors=(0.75, 1.0, 1.25))', NORMALIZE),
          eval_transforms=(NORMALIZE,),
      )
  )
  # batch 8 for 3 epochs: the same 372 updates as batch 16 for 6, at half the pixels (the step's cost scales with
  # them): the job in 2/3 of its CPU time
  c.batch_size = 8  # 124 steps per epoch
  c.eval_batch_size = 50
  c.num_epochs = 3.0
  c.eval_every_epochs = 1000.0  # once, at the end
  c.log_every_steps = 124
  # background pixels weigh 0.1: with 1 every pixel of exits 1-2 stayed background (most pixels are background, so
  # the cells of their coarse RH grids are too); with 0.1 exits 2-4 rise (header)
  c.loss.class_weights = (0.1,) + (1.0,) * 10
  # the step compiles at LLVM -O1: 3/4 of the default's compile time (~60 s vs ~80 s of one core), the same step time
  c.xla_compiler_options = {'xla_backend_optimization_level': 1}
  # the eval step (~27 s of one core) compiles on a second thread beside the train step's compile
  c.compile_eval_ahead = True
  # masked-dense evaluation, not the CPU's 'auto' (sparse): at 64x128 the sparse eval forward compiles in about 5x
  # the CPU time of the dense one (19.3-19.8 s vs 3.5-4.1 s, `python -m benchmarks.profile_anytime_sparse
  # --demo-compile`, 2026-12-06, load ~7; 55 s before the sparse path's chunked loops) and saved ~0.1 s per batch
  # of 50 (12 batches in the job; measured 2026-12-05)
  c.compute.masked_conv = 'dense'
  c.checkpoint.update(dict(every_steps=1000, keep=1, keep_best=False))
  # AdamW: from scratch in ~500 steps; SGD (the reference's, from ImageNet) left every pixel background here
  c.optimizer.update(
      dict(
          name='adamw',
          lr=3e-3,
          weight_decay=1e-4,
          wd_exclude_1d=False,
          schedule='poly',
          poly_power=0.9,
          warmup_epochs=0.3,
      )
  )
  return c
