"""Pruning methods: one module each (l1_norm, slimming)."""
