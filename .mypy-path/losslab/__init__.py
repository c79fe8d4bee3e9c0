"""Type-checking view of the installed namespace: pyproject maps core/, plugins/ and reports/ to losslab.*,
which mypy cannot follow through the editable install; these links give it the same module names."""
