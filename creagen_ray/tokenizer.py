"""Text tokenizers (pure Python, no Ray): char-level with a saved vocab, or byte-level.

Both map text <-> list[int] and serialise to a small JSON dict that travels in dataset
manifests, checkpoints and bundles.
"""

from __future__ import annotations

from typing import Any


class CharTokenizer:
    """Characters -> ids over a fixed vocabulary built from the training corpus."""

    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        if not chars:
            raise ValueError("a char tokenizer needs a non-empty vocabulary")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the sorted set of characters in `text`."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a character outside the vocabulary is a clear error."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        """Ids -> text."""
        return "".join(self.chars[i] for i in ids)

    def token_text(self, i: int) -> str:
        """The text of one token (for streaming)."""
        return self.chars[i]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer:
    """UTF-8 bytes -> ids 0..255: any text round-trips, no vocabulary to save."""

    kind = "byte"
    vocab_size = 256

    @classmethod
    def fit(cls, text: str) -> "ByteTokenizer":
        """Nothing to fit: the vocabulary is all 256 byte values."""
        return cls()

    def encode(self, text: str) -> list[int]:
        """Text -> UTF-8 byte values."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Byte values -> text (an incomplete multi-byte tail becomes U+FFFD)."""
        return bytes(ids).decode("utf-8", errors="replace")

    def token_text(self, i: int) -> str:
        """A single byte as text (multi-byte characters stream as replacement chars)."""
        return bytes([i]).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"kind": self.kind}


Tokenizer = CharTokenizer | ByteTokenizer


def make_tokenizer(kind: str, text: str) -> Tokenizer:
    """Fit a tokenizer of `kind` ("char" | "byte") on `text`."""
    if kind == "char":
        return CharTokenizer.fit(text)
    if kind == "byte":
        return ByteTokenizer.fit(text)
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output."""
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    if d.get("kind") == "byte":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer {d!r}")
