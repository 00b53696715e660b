"""Wording of one-line reasons."""


def shown(text: str) -> str:
    """Client text echoed in a reason, cut short: a reason is one line, not a mirror."""
    return text if len(text) <= 100 else text[:100] + "..."


def is_decimal(text: str) -> bool:
    """Only ASCII digits: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()
