"""A tiny ChatGLM-6B-style ``ice_text.model`` trained offline (tests; nothing is downloaded).

A small BPE on a few sentences (byte fallback, so unseen characters are bytes, not ``<unk>``), with ChatGLM's formatting pieces (``<n>``, ``<|tab|>``, ``<|blank_2..80|>``)
as user-defined pieces, ``<unk>`` 0 / ``<s>`` 1 / ``</s>`` 2 / ``<pad>`` 3, and the eight special pieces
after the text pieces in ChatGLM's order. ``real_ids=True`` pads the vocabulary with unused pieces so
the specials land on the released ids (``[gMASK]`` 130001, ``<sop>`` 130004, ``<eop>`` 130005).
"""

from __future__ import annotations

import io
from pathlib import Path

from mm_visualglm.tokenizer import FILE, MAX_BLANK, SPECIALS

SENTENCES = ("问：图片里有什么？答：一只猫坐在窗台上，阳光照在它身上。", "The quick brown fox jumps over the lazy dog.",
             "VisualGLM 是一个多模态对话模型，能回答关于图片的问题。", "hello world, 你好世界! 12345 <img></img>",
             "Q: What is in the picture?\nA: A red square on a white background.")
FIRST_SPECIAL = 130000


def save_tiny_tokenizer(path: str | Path, *, real_ids: bool = False, vocab: int = 500) -> Path:
    """Write ``ice_text.model`` into ``path``; returns the file."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    fmt = ["<n>", "<|tab|>"] + [f"<|blank_{n}|>" for n in range(2, MAX_BLANK + 1)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(SENTENCES) * 20), model_writer=buf, vocab_size=vocab,
                                   model_type="bpe", user_defined_symbols=fmt, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                                   normalization_rule_name="identity", byte_fallback=True)
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    if real_ids:
        for i in range(len(proto.pieces), FIRST_SPECIAL):
            proto.pieces.add(piece=f"<unused_pad_{i}>", score=0.0, type=pb.ModelProto.SentencePiece.UNUSED)
    for name in SPECIALS:
        proto.pieces.add(piece=name, score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / FILE).write_bytes(proto.SerializeToString())
    return path / FILE


def tokenizer_ids(file: str | Path) -> dict[str, int]:
    """The config.json ids of a tokenizer file (``vocab_size`` rounded up to a multiple of 8)."""
    from mm_visualglm.tokenizer import ChatGLMTokenizer

    tok = ChatGLMTokenizer(file)
    return {"vocab_size": -(-tok.vocab_size // 8) * 8, "mask_token_id": tok.mask_token_id,
            "gmask_token_id": tok.gmask_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "unk_token_id": tok.unk_token_id}
