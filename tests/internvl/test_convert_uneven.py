"""InternVL3's converter splits an uneven vocabulary (301 rows at tp 2, as 151674 rows are at real
sizes) and converts back bit for bit; the conformance suite's fixture is even so the engine can train it."""

from __future__ import annotations

from mm_core.checkpoint import api
from mm_core.plugins import get_plugin_manager
from mm_core.testing.convert_checks import verb_config
from mm_core.testing.hf_files import assert_same_hf_dirs
from mm_internvl.tiny import save_tiny_model


def test_uneven_vocabulary_tp2_pp2_round_trip(tmp_path):
    hf_dir = save_tiny_model(tmp_path / "hf", vocab_size=301)
    conv = get_plugin_manager().converter("InternVLConverter").factory()
    conv.hf_to_mm(verb_config(conv.hf_to_mm, {"mm_dir": str(tmp_path / "mm"), "hf_config": {"hf_dir": str(hf_dir)},
                                              "parallel_config": {"tp_size": 2, "vit_pp_layers": [2, 0],
                                                                  "llm_pp_layers": [0, 2]}}))
    emb = "text_decoder.embedding.word_embeddings.weight"
    rows = [api.read_mm_rank(tmp_path / "mm", tp_rank=r, pp_rank=1)[0][emb].shape[0] for r in range(2)]
    assert rows == [151, 150]  # the first rank takes the extra row
    conv.mm_to_hf(verb_config(conv.mm_to_hf, {"mm_dir": str(tmp_path / "mm"), "save_hf_dir": str(tmp_path / "back")}))
    assert_same_hf_dirs(hf_dir, tmp_path / "back")
