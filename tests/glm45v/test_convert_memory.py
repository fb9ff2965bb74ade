"""GlmConverter's verbs move GLM-4.5V's stacked experts a block at a time: bit-exact with one expert
per block through every verb and layout, and a MoE layer whose stack would show in the peak RSS
converts with a growth far below one stack (one launched process measures all four verbs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mm_core.checkpoint.safetensors_io import SafetensorsError, StreamingWriter, read_header, read_tensor
from mm_core.testing.hf_files import assert_same_hf_dirs, read_dcp_model, read_safetensors_dir

CONV = "GlmConverter"
HF_EXPERT = "model.language_model.layers.{layer}.mlp.experts.{e}.{p}_proj.weight"
ONE_EXPERT = "0.05"  # MiB: less than two experts' slices (48 KiB each), so every block is a single expert


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mm_glm.tiny_moe import save_tiny_model

    with torch.random.fork_rng(devices=[]):  # layer 0 dense, layers 1-2 with 4 experts
        return save_tiny_model(tmp_path_factory.mktemp("hf"), vision_depth=1, text_layers=3, experts=4)


def stacked_by_formula(src: dict[str, torch.Tensor], layer: int, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped-GEMM operands written out by hand: ``[gate_e; up_e]^T`` and ``down_e^T`` per expert."""
    def w(e: int, p: str) -> torch.Tensor:
        return src[HF_EXPERT.format(layer=layer, e=e, p=p)]

    gate_up = torch.stack([torch.cat((w(e, "gate"), w(e, "up"))).t() for e in range(experts)])
    return gate_up, torch.stack([w(e, "down").t() for e in range(experts)])


def _cli(*argv: str) -> None:
    from mm_convert.cli import main

    assert main([CONV, *argv]) == 0


def test_every_verb_moves_the_stacks_one_expert_at_a_time_bit_exact(hf: Path, tmp_path: Path) -> None:
    src = read_safetensors_dir(hf)
    mm, resplit, back = tmp_path / "mm", tmp_path / "mm_tp1", tmp_path / "back"
    _cli("hf_to_mm", "--cfg.hf_config.hf_dir", str(hf), "--cfg.mm_dir", str(mm), "--cfg.parallel_config.tp_size", "2",
         "--cfg.parallel_config.vit_pp_layers", "[1,0]", "--cfg.parallel_config.llm_pp_layers", "[1,2]",
         "--cfg.block_mb", ONE_EXPERT)
    gate_up, down = stacked_by_formula(src, 2, 4)  # layer 2 = local layer 1 of stage 1, on both tp ranks
    for rank in ("mp_rank_00_001", "mp_rank_01_001"):
        state = read_safetensors_dir(mm / "release" / rank)
        (w1,) = [v for k, v in state.items() if k.endswith("layers.1.mlp.experts.weight1")]
        (w2,) = [v for k, v in state.items() if k.endswith("layers.1.mlp.experts.weight2")]
        assert torch.equal(w1, gate_up) and torch.equal(w2, down), rank
    _cli("resplit", "--cfg.mm_dir", str(mm), "--cfg.save_dir", str(resplit), "--cfg.block_mb", ONE_EXPERT)
    _cli("mm_to_hf", "--cfg.mm_dir", str(resplit), "--cfg.save_hf_dir", str(back), "--cfg.block_mb", ONE_EXPERT)
    assert_same_hf_dirs(hf, back)

    import torch.distributed.checkpoint as dcp

    _cli("hf_to_dcp", "--hf_dir", str(hf), "--save_dir", str(tmp_path / "dcp"), "--block_mb", ONE_EXPERT)
    md = dcp.FileSystemReader(str(tmp_path / "dcp" / "release")).read_metadata().state_dict_metadata
    (key,) = [k for k in md if k.endswith("layers.1.mlp.experts.weight1")]
    assert len(md[key].chunks) == 4  # written as one chunk per expert
    (embedding,) = [k for k in md if k.endswith("word_embeddings.weight")]  # [320, 128] fp32: 160 KiB
    assert len(md[embedding].chunks) == 4  # larger than a block and read by rows: 102 rows a chunk
    model = read_dcp_model(tmp_path / "dcp" / "release")
    gate_up, down = stacked_by_formula(src, 1, 4)
    assert torch.equal(model[key[len("model."):]], gate_up)
    assert torch.equal(model[key[len("model."):].replace("weight1", "weight2")], down)
    _cli("dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir", str(tmp_path / "dcp"), "--save_dir", str(tmp_path / "back2"),
         "--block_mb", ONE_EXPERT)
    assert_same_hf_dirs(hf, tmp_path / "back2")


@pytest.mark.parametrize("stored", ["per_expert", "whole"])
def test_dcp_stacks_are_read_in_blocks_no_smaller_than_their_stored_chunks(stored: str, hf: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A read inside a stored DCP chunk loads the whole chunk: a stack that hf_to_dcp wrote one expert
    a chunk is read an expert at a time, one stored whole (an unsharded training save) once."""
    from mm_convert import dcp_chunks

    _cli("hf_to_dcp", "--hf_dir", str(hf), "--save_dir", str(tmp_path / "dcp"), "--block_mb",
         ONE_EXPERT if stored == "per_expert" else "1024")
    reads: list[tuple[str, int, int]] = []
    real = dcp_chunks.load_rows

    def counted(d: Path, fqn: str, start: int, stop: int, meta: torch.Tensor) -> torch.Tensor:
        reads.append((fqn, start, stop))
        return real(d, fqn, start, stop, meta)

    monkeypatch.setattr(dcp_chunks, "load_rows", counted)
    _cli("dcp_to_hf", "--hf_dir", str(hf), "--dcp_dir", str(tmp_path / "dcp"), "--save_dir", str(tmp_path / "back"),
         "--block_mb", ONE_EXPERT)
    assert_same_hf_dirs(hf, tmp_path / "back")
    blocks = sorted((a, b) for fqn, a, b in reads if fqn.endswith("layers.1.mlp.experts.weight1"))
    assert blocks == ([(e, e + 1) for e in range(4)] if stored == "per_expert" else [(0, 4)])
    if stored == "whole":  # each of the four stacks (two a layer) read once
        assert sorted((a, b) for fqn, a, b in reads if ".experts." in fqn) == [(0, 4)] * 4


def test_a_source_without_row_reads_makes_each_stack_once(hf: Path, tmp_path: Path) -> None:
    """The fallback of ``Source.block`` (a source that can only give whole tensors): one-expert
    blocks still give the HF tensors bit-exact, and each stack is made once, not once per block."""
    from collections import Counter

    from mm_convert.engine import write_hf
    from mm_core.checkpoint import api
    from mm_core.checkpoint.hf import HFReader, load_hf_config
    from mm_core.checkpoint.sources import HFSource, StateSource

    conv = api.get_converter(CONV)
    cfg = load_hf_config(hf)
    plan = conv.plan(cfg, conv.placement(cfg, 1, {}), present_hf=None)
    hf_source, by_key = HFSource(HFReader(hf)), plan.by_mm_key()
    made: Counter[str] = Counter()

    def load(key: str) -> torch.Tensor:
        made[key] += 1
        return hf_source.full(by_key[key])

    metas = {it.mm_key: hf_source.meta(it) for it in plan.items}
    (tmp_path / "out").mkdir()
    write_hf(plan, StateSource(metas, load, plan, "a dict", set()), tmp_path / "out", key_style="old", aliases=(),
             max_shard_bytes=1 << 30, progress=False, block_mb=float(ONE_EXPERT))
    (tmp_path / "out" / "config.json").write_bytes((hf / "config.json").read_bytes())
    assert_same_hf_dirs(hf, tmp_path / "out")
    stacks = [k for k in made if k.endswith(("experts.weight1", "experts.weight2"))]
    assert len(stacks) == 4 and set(made.values()) == {1}, made


def test_a_block_size_that_cannot_progress_is_refused_by_name(hf: Path, tmp_path: Path, capsys) -> None:
    from mm_convert.cli import main

    assert main([CONV, "hf_to_mm", "--cfg.hf_config.hf_dir", str(hf), "--cfg.mm_dir", str(tmp_path / "mm"),
                 "--cfg.block_mb", "0"]) == 1
    assert "block_mb (--cfg.block_mb" in capsys.readouterr().err and not (tmp_path / "mm").exists()


def test_rows_written_in_pieces_make_the_tensor_and_bad_pieces_are_refused(tmp_path: Path) -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    w = StreamingWriter(tmp_path / "x.safetensors", {"stack": ((4, 3), torch.float32)})
    assert w.write_rows("stack", t[2:], 2) == 24
    with pytest.raises(SafetensorsError, match=r"rows \[3, 4\).*rows written \[\(2, 4\)\]"):
        w.write_rows("stack", t[3:], 3)  # already written
    with pytest.raises(SafetensorsError, match="do not fit tensor stack"):
        w.write_rows("stack", t[:2, :2], 0)  # wrong row width
    w.write_rows("stack", t[:2], 0)
    w.close()
    assert torch.equal(read_tensor(read_header(tmp_path / "x.safetensors")[0]["stack"]), t)
    half = StreamingWriter(tmp_path / "y.safetensors", {"stack": ((4, 3), torch.float32)})
    half.write_rows("stack", t[:2], 0)
    with pytest.raises(SafetensorsError, match="never written"):
        half.close()
    assert not (tmp_path / "y.safetensors").exists()


MEMORY_SCRIPT = r"""
import gc, json, sys
from pathlib import Path

from mm_convert.cli import main
from mm_core.testing.hf_files import assert_same_hf_dirs

def status(field):  # bytes, from the kB figures of /proc/self/status (Linux)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

root, small = Path(sys.argv[1]), Path(sys.argv[2])  # root/big/hf: the model with the large MoE layer

def verbs(d, hf=None, block_mb="1"):  # the seed's command lines
    hf, mm = str(hf or d / "hf"), str(d / "mm")
    return {"hf_to_mm": ["hf_to_mm", "--cfg.hf_config.hf_dir", hf, "--cfg.mm_dir", mm, "--cfg.block_mb", block_mb],
            "mm_to_hf": ["mm_to_hf", "--cfg.mm_dir", mm, "--cfg.save_hf_dir", str(d / "back"), "--cfg.block_mb", block_mb],
            "hf_to_dcp": ["hf_to_dcp", "--hf_dir", hf, "--save_dir", str(d / "dcp"), "--block_mb", block_mb],
            "dcp_to_hf": ["dcp_to_hf", "--hf_dir", hf, "--dcp_dir", str(d / "dcp"), "--save_dir", str(d / "back_dcp"),
                          "--block_mb", block_mb]}

def peak_growth(argv):
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from the resident size now
    base = status("VmRSS:")
    assert main(["GlmConverter", *argv]) == 0, argv
    return status("VmHWM:") - base

for argv in verbs(root / "small", small).values():  # imports and parsers in memory before any baseline
    assert main(["GlmConverter", *argv]) == 0
growth = {name: peak_growth(argv) for name, argv in verbs(root / "big").items()}
# the control: one block as large as the stack is what building whole stacks costs, and it must show
growth["whole_stack_hf_to_mm"] = peak_growth(["hf_to_mm", "--cfg.hf_config.hf_dir", str(root / "big" / "hf"),
                                              "--cfg.mm_dir", str(root / "control"), "--cfg.block_mb", "1024"])
assert_same_hf_dirs(root / "big" / "hf", root / "big" / "back")
assert_same_hf_dirs(root / "big" / "hf", root / "big" / "back_dcp")
print(json.dumps(growth))
"""


def test_a_layer_of_stacked_experts_never_exists_whole_in_memory(hf: Path, tmp_path: Path) -> None:
    """One MoE layer of 64 experts (stacked gate/up [64, 256, 1024] fp32: 64 MiB) through hf_to_mm,
    mm_to_hf, hf_to_dcp and dcp_to_hf with 1 MiB blocks (one expert): each grows the peak RSS by far
    less than one stack, while the same hf_to_mm with one block for the whole stack grows it by more."""
    from mm_glm.tiny_moe import save_tiny_model

    e, h, i = 64, 256, 512
    stack = e * h * 2 * i * 4
    with torch.random.fork_rng(devices=[]):  # made here, where transformers is imported already
        save_tiny_model(tmp_path / "big" / "hf", vision_depth=1, text_layers=2, experts=e, hidden=h, moe_intermediate=i)
    # freed buffers go back to the OS (a verb cannot hide in the last one's heap); one thread: CI's 2 cores are shared
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), str(hf)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    control = growth.pop("whole_stack_hf_to_mm")
    assert control > stack, (control, stack)
    assert all(g < stack / 4 for g in growth.values()), (growth, stack)
