"""The `mm-convert` grammar, run in process."""

from __future__ import annotations

import json

import pytest

from mm_convert.cli import main
from mm_core.checkpoint import api

CONV = "Qwen2_5_VLConverter"


def test_help_lists_installed_converters(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert CONV in out and "hf_to_mm" in out and "[mm-qwen]" in out


def test_full_grammar_round_trip(qwen_untied, tmp_path, capsys):
    mm, back = tmp_path / "mm", tmp_path / "back"
    assert main([CONV, "hf_to_mm", "--cfg.mm_dir", str(mm), "--cfg.hf_config.hf_dir", str(qwen_untied),
                 "--cfg.parallel_config.llm_pp_layers", "[[0,1],[1,2]]",
                 "--cfg.parallel_config.vit_pp_layers", "[[2,2],[0,0]]",
                 "--cfg.parallel_config.tp_size", "2", "--cfg.trust_remote_code", "False"]) == 0
    assert json.loads((mm / "mm_layout.json").read_text())["llm_pp_layers"] == [[0, 1], [1, 2]]
    assert main([CONV, "resplit", "--cfg.mm_dir", str(mm), "--cfg.save_dir", str(tmp_path / "re"),
                 "--cfg.parallel_config.tp_size", "1", "--cfg.parallel_config.llm_pp_layers", "[1,3]",
                 "--cfg.parallel_config.vit_pp_layers", "[4,0]"]) == 0
    assert main([CONV, "mm_to_hf", "--cfg.mm_dir", str(tmp_path / "re"), "--cfg.save_hf_dir", str(back),
                 "--cfg.hf_config.hf_dir", str(qwen_untied)]) == 0
    assert (back / "model.safetensors").is_file() and (back / "tokenizer_config.json").is_file()
    a = api.hf_to_mm_rank(CONV, qwen_untied)
    b = api.hf_to_mm_rank(CONV, back)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_dcp_flat_flags(qwen_tied, tmp_path):
    assert main([CONV, "hf_to_dcp", "--hf_dir", str(qwen_tied), "--save_dir", str(tmp_path / "dcp")]) == 0
    assert main([CONV, "dcp_to_hf", "--hf_dir", str(qwen_tied), "--dcp_dir", str(tmp_path / "dcp" / "release"),
                 "--save_dir", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors").is_file()


def test_config_file_and_print_config(qwen_untied, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cfg:\n  mm_dir: {tmp_path / 'mm'}\n  hf_config:\n    hf_dir: {qwen_untied}\n"
                   f"  parallel_config:\n    tp_size: 2\n    llm_pp_layers: [1, 3]\n    vit_pp_layers: [4, 0]\n")
    assert main([CONV, "hf_to_mm", "--config", str(cfg), "--cfg.parallel_config.tp_size", "1", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "tp_size: 1" in printed and "llm_pp_layers:" in printed and not (tmp_path / "mm").exists()
    assert main([CONV, "hf_to_mm", "--config", str(cfg)]) == 0
    assert api.read_mm_layout(tmp_path / "mm").tp_size == 2


@pytest.mark.parametrize("argv,code,text", [
    (["NoSuchConverter", "hf_to_mm"], 2, "unknown converter 'NoSuchConverter'"),
    ([CONV, "hf_to_mm", "--cfg.mm_dirr", "x"], 2, "--cfg.mm_dirr"),
    ([CONV, "hf_to_mm", "--cfg.mm_dir", "{tmp}/o", "--cfg.hf_config.hf_dir", "{hf}",
      "--cfg.parallel_config.tp_size", "4"], 1, "does not divide text_config.num_key_value_heads 2"),
])
def test_errors_are_one_line_messages(qwen_untied, tmp_path, capsys, argv, code, text):
    argv = [a.format(tmp=tmp_path, hf=qwen_untied) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
