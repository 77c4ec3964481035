"""Checkpoint -> bundle converter (the only bridge from training to serving)."""
