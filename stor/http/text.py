"""Wording of one-line reasons."""


SHOWN_CHARS = 100
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def shown(text: str) -> str:
    """Client text echoed in a reason: one safe line, cut short (a reason is not a mirror).

    What is not printable (str.isprintable: controls such as CR, LF and NUL, C1
    controls, bidi overrides and other invisible format characters, line and
    paragraph separators) is shown escaped, as Python writes it (\\r, \\x00,
    \\u202e). The cut comes after at most SHOWN_CHARS shown characters, never
    inside an escape.
    """
    if len(text) <= SHOWN_CHARS and text.isprintable():
        return text
    out: list[str] = []
    length = 0
    for c in text:
        piece = c if c.isprintable() else _ESCAPES.get(c) or _escape(c)
        if length + len(piece) > SHOWN_CHARS:
            return "".join(out) + "..."
        out.append(piece)
        length += len(piece)
    return "".join(out)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def is_decimal(text: str) -> bool:
    """Only ASCII digits: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()
