"""Comparison reports built from what the tracker (MLflow) holds."""
