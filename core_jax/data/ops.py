"""The explicit list of op modules, and `build_transforms`, the one entry point that sees every op.

Every transform op named in a config comes from one of `OP_MODULES`; each registers its ops into
`core_jax.data.registry` when imported. Import order is the list's order. Op modules import only the leaves
(`registry`, `primitives`, `image_kernels`), never each other nor this module, so the imports form no circle; the
loop and the pipelines call `build_transforms` here.
"""

from collections.abc import Sequence

from core_jax.data import augment, cityscapes, randaugment, segmentation, transforms
from core_jax.data.registry import Transform, compose

OP_MODULES = (transforms, augment, randaugment, segmentation, cityscapes)


def build_transforms(specs: Sequence[str] | str) -> Transform:
  """Composes the ops of `specs` (spec strings, see `core_jax.data.registry`) left to right."""
  return compose(specs)
