"""Evaluation of pretrained encoders: one module per task (linear probe and k-NN,
fine-tuning, localization, separation, clustering), each run by an `avssl` verb."""
