"""Pipeline placement: absolute stage ranges, virtual chunks, modules that start after stage 0."""

from __future__ import annotations

from mm_core.layout import Placement


def test_module_starting_after_stage_0_keeps_every_layer():
    p = Placement({"vit": 32, "llm": 28}, {"vit": [0, 32, 0, 0], "llm": [0, 0, 18, 10]})
    assert p.first_stage("vit") == p.last_stage("vit") == 1
    assert p.first_stage("llm") == 2 and p.last_stage("llm") == 3
    assert p.place_layer("vit", 0) == (1, 0) and p.place_layer("vit", 31) == (1, 31)
    assert p.place_layer("llm", 17) == (2, 17) and p.place_layer("llm", 18) == (3, 0)


def test_virtual_chunks_flatten_chunk_major():
    # the reference's own vpp example; its placement code shifts this layout
    p = Placement({"vit": 32, "llm": 28}, {"vit": [[10, 10, 10, 2], [0, 0, 0, 0]],
                                           "llm": [[0, 0, 0, 1], [4, 8, 8, 7]]})
    assert (p.pp, p.vpp, p.num_stages) == (4, 2, 8)
    assert p.rank_of(5) == (1, 1) and p.stage_of(1, 1) == 5
    assert p.place_layer("llm", 0) == (3, 0)  # chunk 0 of pp rank 3
    assert p.place_layer("llm", 1) == (4, 0)  # chunk 1 of pp rank 0
    assert p.place_layer("llm", 27) == (7, 6)
    assert sum(p.range("llm", s).count for s in range(8)) == 28
    assert p.layout().llm_pp_layers == [[0, 0, 0, 1], [4, 8, 8, 7]]


def test_defaults_vision_first_llm_last():
    p = Placement({"vit": 4, "llm": 4}, {"llm": [1, 3]})
    assert p.counts == {"vit": [4, 0], "llm": [1, 3]}
    single = Placement({"vit": 4, "llm": 4}, {})
    assert single.num_stages == 1 and single.counts == {"vit": [4], "llm": [4]}
