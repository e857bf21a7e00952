"""ADP-C anytime dense prediction (not yet implemented; see the issues)."""
