"""The offline Qwen2 vocabulary for family test tokenizers (InternVL3's, ...).

The builder lives in :mod:`mm_core.data.bpe_tokenizer` (Qwen2.5-VL's runtime tokenizer uses it
too); this name stays so test fixtures keep their import.
"""

from mm_core.data.bpe_tokenizer import qwen_tokenizer_file

__all__ = ["qwen_tokenizer_file"]
