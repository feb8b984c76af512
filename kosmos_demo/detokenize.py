"""Token ids -> the text each token added, one token at a time, at a cost that does not grow with the sequence.

Decoding the whole sequence again for every new token (and diffing it against
the last decode) costs O(n) per token, O(n^2) per caption and O(n^3) when a
stream re-parses at every step. :class:`PieceDecoder` decodes a short window
instead: the tokens already shown since the last clean cut, plus the new one
(the approach of text-generation-inference's ``decode_token``). One context
token is enough for XLM-R's sentencepiece decoder, which drops the leading
space of a window's first token only; a window grows only while its text ends
in an incomplete character (``\\ufffd``), which a later token completes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

Piece = tuple[str, str]
"""(text this token added, kind): kind is "text", "tag" or "location"."""


class PieceDecoder:
    """Feed token ids with :meth:`push`; each returns that token's :data:`Piece`.

    The pieces' texts always join to what ``tokenizer.decode`` gives for all
    ids pushed so far (as long as no character is left incomplete at the end).
    """

    def __init__(self, tokenizer, location_ids: Collection[int] = (), tag_ids: Collection[int] = ()):
        self.tokenizer = tokenizer
        self.location_ids = location_ids
        self.tag_ids = tag_ids
        self._window: list[int] = []  # the last emitted token, then any not yet emitted
        self._shown_text = ""  # what the window's first token decodes to on its own
        self.decoded_ids = 0
        """How many ids all decode calls so far were given (the work done, for tests and benchmarks)."""

    def push(self, token_id: int) -> Piece:
        self._window.append(token_id)
        text = self._decode(self._window)
        if text.endswith("\ufffd"):
            piece = ""  # an incomplete character: a later token finishes it
        else:
            cut = len(self._shown_text) if text.startswith(self._shown_text) else _common_prefix(self._shown_text, text)
            piece = text[cut:]
            self._window = self._window[-1:]  # the new token is the next window's context
            self._shown_text = self._decode(self._window)
        kind = "location" if token_id in self.location_ids else "tag" if token_id in self.tag_ids else "text"
        return piece, kind

    def extend(self, token_ids: Iterable[int]) -> list[Piece]:
        return [self.push(token_id) for token_id in token_ids]

    def _decode(self, ids: list[int]) -> str:
        self.decoded_ids += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
