"""Built-in plugins: each module registers one kind of component through the public hooks."""
