"""Losses as pure functions of tensors, and the small state modules some of them need
(memory banks, the NCE normaliser). Nothing here knows about Lightning or the data."""
