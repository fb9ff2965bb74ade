"""ChatGLM-6B's tokenizer (``ice_text.model``, sentencepiece) without remote code.

ChatGLM-6B's text pre-processing: a newline is the piece ``<n>``, a tab ``<|tab|>``, a run of 2-80
spaces ``<|blank_N|>``; decoding reverses it. Special pieces sit after the text pieces in the order
``[MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>`` (130000-130007 in the released file;
``<sop>`` is bos, ``<eop>`` eos), ``<pad>`` is 3 and ``<unk>`` 0. Ids are read from the file, never
assumed, and a file without these pieces is refused by name.
"""

from __future__ import annotations

from pathlib import Path

from mm_core.errors import ConfigError

FILE = "ice_text.model"
SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
MAX_BLANK = 80


def find_tokenizer_file(path: str | Path) -> Path | None:
    """``ice_text.model`` of a model directory (or the file itself), or None."""
    p = Path(path)
    if p.is_file() and p.suffix == ".model":
        return p
    return p / FILE if (p / FILE).is_file() else None


class ChatGLMTokenizer:
    def __init__(self, file: str | Path):
        import sentencepiece as spm

        self.file = Path(file)
        if not self.file.is_file():
            raise ConfigError(f"{self.file}: ChatGLM-6B's tokenizer file does not exist; real runs read {FILE} from "
                              "the checkpoint directory (THUDM/chatglm-6b or visualglm-6b ships it)")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.file))
        ids = {p: self.sp.piece_to_id(p) for p in (*SPECIALS, "<n>", "<pad>", "<unk>")}
        unk = self.sp.unk_id()
        missing = [p for p, i in ids.items() if i == unk and p != "<unk>"]
        if missing:
            raise ConfigError(f"{self.file}: no piece {missing}; is this ChatGLM-6B's ice_text.model?")
        self.mask_token_id, self.gmask_token_id = ids["[MASK]"], ids["[gMASK]"]
        self.bos_token_id, self.eos_token_id = ids["<sop>"], ids["<eop>"]
        self.pad_token_id, self.unk_token_id = ids["<pad>"], ids["<unk>"]

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @staticmethod
    def preprocess(text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for n in range(MAX_BLANK, 1, -1):
            text = text.replace(" " * n, f"<|blank_{n}|>")
        return text

    def encode(self, text: str) -> list[int]:
        """Ids without special tokens (``add_special_tokens=False`` in the original)."""
        return list(self.sp.encode(self.preprocess(text)))

    def build_inputs(self, prompt_ids: list[int], answer_ids: list[int] | None = None) -> list[int]:
        """``prompt + [gMASK] <sop>`` (+ ``answer + <eop>``), ChatGLM-6B's ``build_inputs_with_special_tokens``."""
        ids = list(prompt_ids) + [self.gmask_token_id, self.bos_token_id]
        return ids + list(answer_ids) + [self.eos_token_id] if answer_ids is not None else ids

    def decode(self, ids: list[int]) -> str:
        specials = {self.mask_token_id, self.gmask_token_id, self.bos_token_id, self.eos_token_id, self.pad_token_id}
        size = self.vocab_size
        text = self.sp.decode([i for i in ids if i not in specials and 0 <= i < size])
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        for n in range(2, MAX_BLANK + 1):
            text = text.replace(f"<|blank_{n}|>", " " * n)
        return text

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(self.file.read_bytes()).hexdigest()[:16]
