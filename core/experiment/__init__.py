"""Experiments: the study runner (variants x seeds), MLflow tracking, the terminal tables, tuning with Optuna,
prediction. The end-of-run report is not built here: the CLI passes it in as a callback (``on_finished``)."""
