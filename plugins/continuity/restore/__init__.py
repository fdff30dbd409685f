"""Restores: logical and physical/point-in-time restores into scratch clusters, and their expectations."""
