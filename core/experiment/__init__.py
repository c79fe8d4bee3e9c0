"""Experiments: the study runner (variants x seeds), MLflow tracking, tuning with Optuna, prediction."""
