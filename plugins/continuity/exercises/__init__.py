"""Exercises: the drill, the sample restore test, the region-loss exercise, the plan review, load."""
