"""Clip loading: decord decoding and temporal sampling (``video``), clip-consistent transforms
(``transforms``), and WebDataset training/evaluation loaders with joint-dataset batches (``shards``).

Nothing is imported here: ``from tubevit.data.shards import train_loader`` etc. (see docs/loader.md).
"""
