"""README.md's "Quick start on real models" blocks (Qwen2.5-VL-7B, GLM-4.1V-9B) run as written, with
tiny stand-ins for the real files.

The bash block is read from the README by its heading, so an edit there is what this test runs.
Each command line goes through the installed console-script entry point of its program (``mm-run``,
``mm-convert``), in a temporary working directory that holds, at the paths the README uses:
``examples/`` (a link to the repository's: the README is run from a checkout),
``ckpt/hf_path/Qwen2.5-VL-7B-Instruct`` (a tiny random Qwen2.5-VL with processor files),
``data/llava_instruct_150k.json`` (a few LLaVA records: four with an image, one text-only),
``data/COCO2017/train2017/*.jpg`` and ``demo.jpg`` (generated images).

Substitutions, the least that lets the block run on 2 CPU cores without downloads:

- ``make setup && source .venv/bin/activate``: skipped (the test already runs in that venv).
- ``huggingface-cli download REPO --local-dir DIR``: a tiny random model is written to DIR.
- ``mm-convert ... hf_to_mm``: the layer lists name the tiny model's 4 vision and 4 LLM layers on
  the README's 4 stages (``[4,0,0,0]``, ``[1,1,1,1]``); everything else as written.
- ``mm-run finetune --nproc-per-node 8``: 2 processes; the README's config with overrides for the
  tiny model (pp 2 with its layer lists, 2 steps of 2 samples, sequence 512, one loader worker).
- ``mm-convert ... dcp_to_hf --dcp_dir save_dir/qwen2_5_vl_7b/iter_0005000``: the iteration the
  2-step run saved (``iter_0000002``).
- ``mm-run infer``: ``--max-new-tokens 4`` added.

The GLM-4.1V and InternVL3 blocks get the same substitutions with tiny models (4 + 4 layers, the
offline processors): their ``hf_to_mm`` lines keep their layout shapes (``[[4]]``/``[[4]]``,
``[[1,1,1,1]]``/``[[4,0,0,0]]``; InternVL3-78B's tp 8 ``[[2,2]]``/``[[3,0]]`` on a tiny model with 10
ViT heads and 301 vocabulary rows, which 8 splits unevenly), and their ``finetune`` keeps the frozen
vision stage alone (``[4,0]`` / ``[0,4]``).
"""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Quick start on real models"
GLM_HEADING = "## Quick start on real models: GLM-4.1V-9B"
GLM_PROGRAMS = ["make", "huggingface-cli", "mm-run data llava-to-mllm", "mm-run data inspect",
                "mm-convert GlmConverter hf_to_mm", "mm-convert GlmConverter hf_to_mm", "mm-run finetune",
                "mm-convert GlmConverter dcp_to_hf", "mm-run infer"]
PROGRAMS = ["make", "huggingface-cli", "mm-run data llava-to-mllm", "mm-run data inspect",
            "mm-convert Qwen2_5_VLConverter hf_to_mm", "mm-run finetune",
            "mm-convert Qwen2_5_VLConverter dcp_to_hf", "mm-run infer"]
TINY_RUN = ["--training.global_batch_size", "2", "--training.train_iters", "2", "--training.seq_length", "512",
            "--data.config.dataloader_param.num_workers", "1"]
FINETUNE_OVERRIDES = ["--parallel.pp", "2", "--model.vit_pp_layers", "[4,0]", "--model.llm_pp_layers", "[1,3]",
                      *TINY_RUN]
GLM_FINETUNE_OVERRIDES = ["--parallel.pp", "2", "--model.vit_pp_layers", "[4,0]", "--model.llm_pp_layers", "[0,4]",
                          *TINY_RUN]
INTERNVL_HEADING = "## Quick start on real models: InternVL3"
INTERNVL_PROGRAMS = ["make", "huggingface-cli", "huggingface-cli", "mm-run data inspect",
                     "mm-convert InternVLConverter hf_to_mm", "mm-convert InternVLConverter hf_to_mm",
                     "mm-run finetune", "mm-convert InternVLConverter dcp_to_hf", "mm-run infer"]
INTERNVL_LAYOUTS = {"[[6,8,8,6]]": "[[1,1,1,1]]", "[[24,0,0,0]]": "[[4,0,0,0]]", "[[40,40]]": "[[2,2]]",
                    "[[45,0]]": "[[3,0]]"}
INTERNVL_FINETUNE_OVERRIDES = GLM_FINETUNE_OVERRIDES
GLM45V_HEADING = "## Quick start on real models: GLM-4.5V"
GLM45V_PROGRAMS = ["make", "huggingface-cli", "mm-run data llava-to-mllm", "mm-convert ExpertMergeDcpConverter hf_to_dcp",
                   "mm-run finetune", "mm-convert ExpertMergeDcpConverter dcp_to_hf"]
GLM45V_FINETUNE_OVERRIDES = ["--parallel.ep", "2", *TINY_RUN]
QWEN_LAYOUTS = {"[32,0,0,0]": "[4,0,0,0]", "[1,10,10,7]": "[1,1,1,1]"}
GLM_LAYOUTS = {"[[40]]": "[[4]]", "[[24]]": "[[4]]", "[[5,12,12,11]]": "[[1,1,1,1]]", "[[24,0,0,0]]": "[[4,0,0,0]]"}


def readme_commands(readme: Path = ROOT / "README.md", heading: str = HEADING) -> list[list[str]]:
    """The command lines (continuations joined, comments dropped) of the first bash block under ``heading``."""
    text = readme.read_text()
    start = text.index(heading)
    section = text[start:]
    nxt = re.search(r"^## ", section[len(heading):], re.M)
    section = section[: len(heading) + nxt.start()] if nxt else section
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README.md: no ```bash block under '{heading}'"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def _program(words: list[str]) -> str:
    """The command's name as in ``PROGRAMS`` (program plus its verbs)."""
    depth = {"mm-run": 3 if words[1:2] == ["data"] else 2, "mm-convert": 3}.get(words[0], 1)
    return " ".join(words[:depth])


def _set(words: list[str], flag: str, value: str) -> list[str]:
    """``words`` with ``flag``'s value replaced; the flag must be there (else the README drifted)."""
    assert flag in words, f"README command {' '.join(words[:3])} no longer has {flag}"
    i = words.index(flag)
    return [*words[: i + 1], value, *words[i + 2:]]


def _entry_point(name: str):
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    return ep.load()


def _image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _llava_records(names: list[str]) -> list[dict]:
    recs = [{"id": str(i), "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": f"Colour {i}."}]}
        for i, name in enumerate(names)]
    recs.append({"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]})
    return recs


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """The files the README's block expects, except the model (the download line makes it)."""
    images = tmp_path / "data" / "COCO2017" / "train2017"
    names = [f"{i:012d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        _image(images / name, i)
    (tmp_path / "data" / "llava_instruct_150k.json").write_text(json.dumps(_llava_records(names)))
    _image(tmp_path / "demo.jpg", 99, (56, 56))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def _run(words: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = _entry_point(words[0])(words[1:])
    out, err = capsys.readouterr()
    assert rc in (0, None), f"{' '.join(words)} failed ({rc}):\n{out}\n{err}"
    return int(rc or 0), out, err


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_quick_start_runs_as_written(workspace, capsys):
    from mm_qwen.tiny import save_tiny_model

    def download(target: Path, repo: str) -> None:
        save_tiny_model(target, with_processor=True, seed=1, std=0.2)

    outputs = _run_block(workspace, capsys, HEADING, PROGRAMS, download, QWEN_LAYOUTS, FINETUNE_OVERRIDES)

    mllm = json.loads((workspace / "data" / "mllm_format_llava_instruct_data.json").read_text())
    assert len(mllm) == 5 and mllm[0]["images"] == ["COCO2017/train2017/000000000001.jpg"]
    assert "usable: 5" in outputs["mm-run data inspect"] and "bad records: none" in outputs["mm-run data inspect"]
    assert (workspace / "ckpt/mm_path/Qwen2.5-VL-7B-Instruct/release/mp_rank_00_003").is_dir()
    assert (workspace / "save_dir/qwen2_5_vl_7b/iter_0000002").is_dir()
    assert any((workspace / "ckpt/hf_path/Qwen2.5-VL-7B-finetuned").glob("*.safetensors"))
    assert outputs["mm-run infer"].strip(), "infer printed no answer"


def _run_block(workspace: Path, capsys, heading: str, programs: list[str], download, layouts: dict[str, str],
               finetune_overrides: list[str]) -> dict[str, str]:
    """Run the README block under ``heading`` with the module docstring's substitutions: ``download(dir,
    repo)`` writes the tiny stand-in, ``layouts`` maps each layer-list value to the tiny model's."""
    commands = readme_commands(heading=heading)
    assert [_program(w) for w in commands] == programs, f"the README's block under {heading!r} changed: update this test"
    outputs: dict[str, str] = {}
    for words in commands:
        name = _program(words)
        if name == "make":
            continue
        if name == "huggingface-cli":
            download(workspace / words[words.index("--local-dir") + 1], words[2])
            continue
        if name.endswith("hf_to_mm"):
            for flag in ("--cfg.parallel_config.llm_pp_layers", "--cfg.parallel_config.vit_pp_layers"):
                words = _set(words, flag, layouts[words[words.index(flag) + 1]])
        elif name == "mm-run finetune":
            words = [*_set(words, "--nproc-per-node", "2"), *finetune_overrides]
        elif name.endswith("dcp_to_hf"):
            dcp = words[words.index("--dcp_dir") + 1]
            words = _set(words, "--dcp_dir", re.sub(r"iter_\d{7}$", "iter_0000002", dcp))
        elif name == "mm-run infer":
            words = [*words, "--max-new-tokens", "4"]
        outputs[name] = _run(words, capsys)[1]
    return outputs


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_glm_quick_start_runs_as_written(workspace, capsys):
    from mm_glm.testing_tokenizer import save_glm_processor
    from mm_glm.tiny import save_tiny_model

    def download(target: Path, repo: str) -> None:
        save_glm_processor(save_tiny_model(target, vision_depth=4, text_layers=4, vocab=_glm_vocab(), hidden=64,
                                           seed=1, std=0.2))

    outputs = _run_block(workspace, capsys, GLM_HEADING, GLM_PROGRAMS, download, GLM_LAYOUTS, GLM_FINETUNE_OVERRIDES)
    assert "usable: 5" in outputs["mm-run data inspect"] and "bad records: none" in outputs["mm-run data inspect"]
    assert (workspace / "ckpt/mm_path/GLM-4.1V-9B-Thinking/release/mp_rank_00").is_dir()
    assert (workspace / "ckpt/mm_path/GLM-4.1V-9B-Thinking-pp4/release/mp_rank_00_003").is_dir()
    assert (workspace / "save_dir/glm4_1v_9b_pp4/iter_0000002").is_dir()
    assert any((workspace / "ckpt/hf_path/GLM-4.1V-9B-finetuned").glob("*.safetensors"))
    assert outputs["mm-run infer"].strip(), "infer printed no answer"


def _glm_vocab() -> dict[str, int]:
    """The offline GLM tokenizer's vocabulary size and ids (GLM-4's), for a tiny model's config."""
    from mm_glm.testing_tokenizer import TOKEN_IDS

    return {"vocab_size": 151552, "image_token_id": TOKEN_IDS["<|image|>"], "video_token_id": TOKEN_IDS["<|video|>"],
            "image_start_token_id": TOKEN_IDS["<|begin_of_image|>"], "image_end_token_id": TOKEN_IDS["<|end_of_image|>"],
            "video_start_token_id": TOKEN_IDS["<|begin_of_video|>"], "video_end_token_id": TOKEN_IDS["<|end_of_video|>"]}


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_glm45v_quick_start_runs_as_written(workspace, capsys):
    """The GLM-4.5V block (convert -> finetune -> convert back) on a tiny GLM-4.5V (3 LLM layers, 4
    experts, the offline processor). Substitutions: the 8-node launch line runs here alone
    (``--nnodes``/``--node-rank``/``--master-addr`` dropped, 2 processes, expert parallel 2, the tiny
    run's overrides); after ``hf_to_dcp`` the HF dir's weights are replaced by another seed's, so the
    trained weights can only have come from the converted checkpoint; ``dcp_to_hf`` reads the
    iteration the 2-step run saved. The HF output must hold the trained weights bit-exactly, the
    frozen vision tower the original's, and every other tensor stay within 2 AdamW steps of it
    (``mm_glm.seed_flow_checks``)."""
    import shutil

    import yaml

    from mm_glm.seed_flow_checks import check_seed_flow, hf_tensors
    from mm_glm.testing_tokenizer import save_glm_processor
    from mm_glm.tiny_moe import save_tiny_model

    def tiny(target: Path, seed: int) -> Path:
        return save_glm_processor(save_tiny_model(target, vision_depth=2, text_layers=3, vocab=_glm_vocab(), hidden=64,
                                                  seed=seed, std=0.2))

    commands = readme_commands(heading=GLM45V_HEADING)
    assert [_program(w) for w in commands] == GLM45V_PROGRAMS, "the README's GLM-4.5V block changed: update this test"
    original: dict = {}
    for words in commands:
        name = _program(words)
        if name == "make":
            continue
        if name == "huggingface-cli":
            hf = workspace / words[words.index("--local-dir") + 1]
            original = hf_tensors(tiny(hf, seed=1))
            continue
        if name == "mm-run finetune":
            for flag in ("--nnodes", "--node-rank", "--master-addr"):
                i = words.index(flag)
                words = words[:i] + words[i + 2:]
            words = [*_set(words, "--nproc-per-node", "2"), *GLM45V_FINETUNE_OVERRIDES]
        elif name.endswith("dcp_to_hf"):
            words = _set(words, "--dcp_dir", re.sub(r"iter_\d{7}$", "iter_0000002", words[words.index("--dcp_dir") + 1]))
        _run(words, capsys)
        if name.endswith("hf_to_dcp"):  # the finetune must take its weights from the converted checkpoint
            other = tiny(workspace / "other_seed", seed=2)
            (hf / "model.safetensors").unlink()  # a new file: never rewritten under a reader's memory map
            shutil.copy(other / "model.safetensors", hf / "model.safetensors")
    config = yaml.safe_load((ROOT / "examples/glm4_5v/finetune_106b.yaml").read_text())
    changed = check_seed_flow(workspace / "ckpt/hf_path/GLM-4.5V-finetuned", workspace / "save_dir/glm4_5v_106b/iter_0000002",
                              original, ("model.visual.",), config["training"]["lr"], steps=2)
    assert any(".mlp.experts." in k for k in changed)


@pytest.mark.slow
@pytest.mark.distributed
def test_readme_internvl_quick_start_runs_as_written(workspace, capsys):
    from mm_internvl.tiny import save_tiny_model
    from mm_internvl.tokenizer import TOKEN_IDS, VOCAB_SIZE, save_offline_processor

    def download(target: Path, repo: str) -> None:
        if repo.endswith("78B-hf"):  # 78B-like: 10 ViT heads and 301 vocabulary rows at tp 8, q/k norms
            save_tiny_model(target, seed=1, vision_depth=3, text_layers=4, qk_norm=True, vocab_size=301,
                            vision={"hidden_size": 40, "num_attention_heads": 10, "intermediate_size": 80},
                            text={"num_attention_heads": 8, "num_key_value_heads": 8})
            return
        save_tiny_model(target, vision_depth=4, text_layers=4, vocab_size=VOCAB_SIZE)
        cfg = json.loads((target / "config.json").read_text())
        cfg["image_token_id"] = TOKEN_IDS["<IMG_CONTEXT>"]  # the offline tokenizer's id, as in the real model
        (target / "config.json").write_text(json.dumps(cfg))
        save_offline_processor(target, tile_size=56, image_seq_length=4)

    outputs = _run_block(workspace, capsys, INTERNVL_HEADING, INTERNVL_PROGRAMS, download, INTERNVL_LAYOUTS,
                         INTERNVL_FINETUNE_OVERRIDES)
    assert "usable: 5" in outputs["mm-run data inspect"] and "bad records: none" in outputs["mm-run data inspect"]
    assert (workspace / "ckpt/mm_path/InternVL3-8B/release/mp_rank_00_003").is_dir()
    assert (workspace / "ckpt/mm_path/InternVL3-78B/release/mp_rank_07_001").is_dir()
    assert (workspace / "save_dir/internvl3_8b_pp4/iter_0000002").is_dir()
    assert any((workspace / "ckpt/hf_path/InternVL3-8B-finetuned").glob("*.safetensors"))
    assert outputs["mm-run infer"].strip(), "infer printed no answer"
