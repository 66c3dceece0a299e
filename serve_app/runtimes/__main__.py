"""``python -m serve_app.runtimes``: print the README's runtime table, made from the registry."""

from serve_app.runtimes import runtime_table

print(runtime_table(), end="")
