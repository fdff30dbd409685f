"""The benchmarks' output: one aligned line per measurement."""

from __future__ import annotations


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
