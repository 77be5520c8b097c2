"""Evaluation of pretrained encoders: one module per task, each run by an `avssl` verb
(docs/evaluation.md) through the same two functions:

* ``evaluate(config: DictConfig) -> dict``: runs the task from the loaded recipe, writes
  ``run_dir/metrics.json`` and returns its results with ``metrics_file`` (the path written);
* ``report(results: dict) -> str``: the text the verb prints.

linear_probe (probe), finetune, localization (localize), separation (separate), clustering
(cluster), retrieval (retrieve); what they share: encoders (what is evaluated, and on which device), features
(cached frozen features), io (one pass over a split through AVDataModule, metrics.json)."""
