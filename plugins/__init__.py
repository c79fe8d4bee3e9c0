"""Built-in plugins: ``builtin.py`` registers every built-in component (lazily) through the public hooks;
the other modules hold the components themselves."""
