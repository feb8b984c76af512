"""User values in messages and JSON: short, escaped, valid Unicode. No gradio or torch here.

A message quotes at most a short prefix of what it refuses (a 100 KB value must
not come back inside its own error), and text that goes into JSON or a UTF-8
file must encode: lone surrogates are written out as escapes.
"""

from __future__ import annotations

QUOTE_LIMIT = 40
"""Characters of a refused value a message shows, escapes included."""


def quote_value(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A user's value for a message: strings quoted and escaped like ``repr``, cut after ``limit`` characters.

    Numbers and other values read as ``repr`` without quotes, so short values
    look as they always did. A cut value ends in an ellipsis and says its length.

    >>> quote_value("nucleus"), quote_value(1000), quote_value(float("nan")), quote_value((1, 2))
    ("'nucleus'", '1000', 'nan', '(1, 2)')
    >>> quote_value("x" * 100_000)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…' (100000 characters)"
    >>> quote_value("a\\nb\\ud800")
    "'a\\\\nb\\\\ud800'"
    """
    if isinstance(value, str):
        text, quote = value, "'"
    else:
        try:
            text, quote = repr(value), ""  # already escaped
        except ValueError:  # an int past sys.get_int_max_str_digits()
            return f"a {type(value).__name__} too long to show"
    pieces, used = [], 0
    for ch in text:
        piece = _escape(ch) if quote else ch
        if used + len(piece) > limit:
            return f"{quote}{''.join(pieces)}\u2026{quote} ({len(text)} characters)"
        pieces.append(piece)
        used += len(piece)
    return f"{quote}{''.join(pieces)}{quote}"


def _escape(ch: str) -> str:
    if ch == "'":
        return "\\'"
    return repr(ch)[1:-1] if ch == "\\" or not ch.isprintable() else ch


def invalid_unicode_at(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate), or None when there is none.

    >>> invalid_unicode_at("what \\ud800 is"), invalid_unicode_at("fine 🙂")
    (5, None)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def valid_unicode(text: str) -> str:
    """``text`` with every lone surrogate written out, so it encodes as UTF-8; valid text is returned as is.

    An undecodable byte that ``surrogateescape`` carried (a file name or argument
    that is not UTF-8) becomes ``\\xNN``, any other lone surrogate ``\\uXXXX``.

    >>> valid_unicode("b\\udcff\\udcfe.png"), valid_unicode("a\\ud800b"), valid_unicode("café")
    ('b\\\\xff\\\\xfe.png', 'a\\\\ud800b', 'café')
    """
    if invalid_unicode_at(text) is None:
        return text
    return "".join(_escape_surrogate(ch) if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _escape_surrogate(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
