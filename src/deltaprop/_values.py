"""Predicates on values read from JSON or TOML, shared by every validator (bool is not a number)."""


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
