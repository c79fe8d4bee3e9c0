"""The ``lab`` command: typer apps. The only place that wires the engine to the built-in plugins and reports."""
