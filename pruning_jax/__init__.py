"""Rethinking the Value of Network Pruning (not yet implemented; see the issues)."""
