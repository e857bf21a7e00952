"""Data: TFDS sources (incl. embedded offline datasets), numpy augmentations, grain pipelines."""
