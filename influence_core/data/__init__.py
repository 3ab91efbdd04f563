"""Datasets and their sources, model builders and safe checkpoints, seeded training, and the
registry that puts them together into a Problem (model + splits)."""
