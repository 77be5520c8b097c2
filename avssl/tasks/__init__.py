"""LightningModules: pretext methods (pretext/) and downstream evaluations (downstream/)."""
