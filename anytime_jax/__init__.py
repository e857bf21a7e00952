"""ADP-C anytime dense prediction (Liu et al., CVPR 2021): HRNet with early exits and confidence-adaptive masked
convs (`hrnet`, `exits`, `confidence`), the paper's FLOP counts (`flops`), timm and official weights (`convert`),
the training/eval Task (`task`) and the anytime curve (`curve`); `python -m anytime_jax.main` runs it."""
