"""Small datasets generated offline (no network) as TFDS builders, prepared on first use."""

import importlib.resources
import sys

# tfds 4.9.10 lazily imports the `importlib_resources` backport in `DatasetBuilder.code_path`
# (reached by every download_and_prepare) but does not depend on it; the stdlib module has the
# same `abc.Traversable`, so alias it when the backport is absent.
try:
  import importlib_resources  # noqa: F401
except ImportError:
  sys.modules.setdefault('importlib_resources', importlib.resources)
