"""Transforms that need torch: the staged model, training, pruning, exits, export, the torch
builder. Imported only behind :class:`spaces.builder.Builder`."""
