"""Speed, measured side by side with the PyTorch references in the same run (`make bench`)."""
