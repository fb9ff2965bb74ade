"""Every example config validates at each launch its own comments document, and `mm-run data
inspect` works on it, from a working directory laid out as the config expects.

The model directory a config names gets the real model's layer counts in ``config.json`` (the
pipeline layer lists are checked against them) and a tiny model's tokenizer/processor files; the
dataset the config names gets three generated records whose images sit where the path rule
(relative to ``dataset_dir``) puts them. A config on synthetic data has no files to inspect:
inspect must say so and succeed.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mm_core.cli.main import main as mm_run

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").rglob("*.yaml")
                 if "plugin-template" not in p.parts)
# family and (vision blocks, LLM layers) of the published checkpoints the configs name
REAL_MODELS = {"Qwen2.5-VL-3B-Instruct": ("qwen", (32, 36)), "Qwen2.5-VL-7B-Instruct": ("qwen", (32, 28)),
               "Qwen2.5-VL-72B-Instruct": ("qwen", (32, 80)), "GLM-4.1V-9B-Thinking": ("glm", (24, 40)),
               "GLM-4.5V": ("glm45v", (24, 46)),
               "InternVL3-8B": ("internvl", (24, 28)), "InternVL3-78B": ("internvl", (45, 80)),
               "visualglm-6b-mm": ("visualglm", (39, 28))}


def documented_launches(path: Path) -> list[tuple[int, list[str]]]:
    """(world size, config overrides) of each ``mm-run finetune`` command in the file's comments."""
    comments = "\n".join(line.lstrip("#") for line in path.read_text().splitlines() if line.startswith("#"))
    launcher = argparse.ArgumentParser(add_help=False)
    launcher.add_argument("--nproc-per-node", type=int, default=1)
    launcher.add_argument("--nnodes", type=int, default=1)
    launcher.add_argument("--node-rank")
    launcher.add_argument("--master-addr")
    launcher.add_argument("--config")
    out = []
    for command in re.findall(r"mm-run finetune ((?:[^\n]*\\\n)*[^\n]*)", comments):
        args, rest = launcher.parse_known_args(shlex.split(command.replace("\\\n", " ")))
        assert args.config and Path(args.config).name == path.name, f"{path}: a comment launches {args.config}"
        out.append((args.nproc_per_node * args.nnodes, rest))
    return out


def documented_steps(path: Path) -> list[list[str]]:
    """The ``python -m ...`` commands a config's comments say to run before it (data, a tiny model)."""
    comments = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(c, comments=True) for c in comments if c.startswith("python -m ")]


def _model_dir(target: Path, processor_files: Path, layers: tuple[int, int]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for f in processor_files.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, target / f.name)
    cfg = json.loads((target / "config.json").read_text())
    if "eva_config" in cfg:  # VisualGLM: ChatGLM's and the EVA ViT's own keys
        cfg["eva_config"]["num_layers"], cfg["num_layers"] = layers
    else:
        vision = cfg["vision_config"]
        vision["depth" if "depth" in vision else "num_hidden_layers"], cfg["text_config"]["num_hidden_layers"] = layers
        cfg["text_config"].pop("layer_types", None)  # per-layer list of the tiny model: rebuilt from the count
    (target / "config.json").write_text(json.dumps(cfg))


def _dataset(dataset_dir: Path, records_file: Path, internvl: bool = False, fewshot: bool = False) -> None:
    """Three image records under ``dataset_dir``: mllm JSON, InternVL's own (JSON or jsonl), or
    VisualGLM's few-shot list."""
    rng = np.random.default_rng(0)
    (dataset_dir / "pics").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)).save(dataset_dir / "pics" / f"{i}.jpg")
        if fewshot:
            records.append({"img": f"pics/{i}.jpg", "prompt": "What is it?", "label": f"Thing {i}."})
        elif internvl:
            records.append({"image": f"pics/{i}.jpg", "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": f"Thing {i}."}]})
        else:
            records.append({"images": [f"pics/{i}.jpg"], "messages": [
                {"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": f"Thing {i}."}]})
    records_file.parent.mkdir(parents=True, exist_ok=True)
    if records_file.suffix == ".jsonl":
        records_file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        records_file.write_text(json.dumps(records))


def _tiny_family_dir(family: str, path: Path) -> Path:
    """A tiny random model of the family with its processor files (config.json gives the structure)."""
    if family == "visualglm":
        from mm_visualglm.tiny_example import write_example

        return write_example(path) / "model"
    if family == "internvl":
        from mm_internvl.tiny import save_tiny_model as save_internvl
        from mm_internvl.tokenizer import TOKEN_IDS, VOCAB_SIZE, save_offline_processor

        save_internvl(path, vocab_size=VOCAB_SIZE)
        cfg = json.loads((path / "config.json").read_text())
        cfg["image_token_id"] = TOKEN_IDS["<IMG_CONTEXT>"]  # the offline tokenizer's id, as in the real model
        (path / "config.json").write_text(json.dumps(cfg))
        return save_offline_processor(path, tile_size=56, image_seq_length=4)
    if family in ("glm", "glm45v"):
        from mm_glm.testing_tokenizer import save_glm_processor
        from mm_glm.tiny import save_tiny_model as save_glm
        from mm_glm.tiny_moe import save_tiny_model as save_glm45v

        return save_glm_processor((save_glm45v if family == "glm45v" else save_glm)(path))
    from mm_qwen.tiny import save_tiny_model

    return save_tiny_model(path, with_processor=True)


@pytest.fixture(scope="module")
def processor_files(tmp_path_factory):
    """family -> a tiny model dir of that family, built once per module on first use."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = _tiny_family_dir(family, tmp_path_factory.mktemp(f"tiny_{family}"))
        return built[family]

    return get


@pytest.fixture
def workdir(tmp_path, monkeypatch, processor_files):
    """A working directory with examples/ and, per config, its model dir and dataset."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)

    def prepare(config: str) -> dict:
        raw = yaml.safe_load((ROOT / config).read_text())
        for step in documented_steps(ROOT / config):
            subprocess.run([sys.executable, *step[1:]], check=True, cwd=tmp_path, capture_output=True)
        hf_dir = raw["model"].get("hf_dir") or raw["model"].get("mm_dir")
        if hf_dir and not (tmp_path / hf_dir).exists():
            family, layers = REAL_MODELS.get(Path(hf_dir).name, ("qwen", (4, 4)))
            _model_dir(tmp_path / hf_dir, processor_files(family), layers)
        if (raw.get("output") or {}).get("load"):  # a checkpoint to start from (GLM-4.5V: hf_to_dcp's)
            (tmp_path / raw["output"]["load"]).mkdir(parents=True, exist_ok=True)
        basic = (raw["data"].get("config") or {}).get("basic_parameters")
        if basic and "data_path" in basic:  # InternVL's names: records relative to the working dir
            _dataset(tmp_path / basic["data_folder"], tmp_path / basic["data_path"], internvl=True)
        elif basic and not (tmp_path / basic["dataset_dir"] / basic["dataset"]).exists():
            _dataset(tmp_path / basic["dataset_dir"], tmp_path / basic["dataset_dir"] / basic["dataset"],
                     fewshot=basic.get("template") == "visualglm")
        return raw

    return prepare


@pytest.mark.parametrize("config", CONFIGS)
def test_example_config_validates_and_inspects(config, workdir, capsys):
    from mm_core.engine.config import parse_finetune_config, validate

    raw = workdir(config)
    launches = documented_launches(ROOT / config)
    assert launches, f"{config}: no '# mm-run finetune ... --config {config}' line says how to run it"
    for world, overrides in launches:
        cfg = parse_finetune_config(["--config", config, *overrides])
        layout = validate(cfg, world)
        assert layout.tp * layout.pp * layout.dp * layout.cp == world
    capsys.readouterr()
    assert mm_run(["data", "inspect", config]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if raw["data"].get("source") == "synthetic":
        assert "synthetic" in out and "no records to inspect" in out
    else:
        basic = raw["data"]["config"]["basic_parameters"]
        file = Path(basic["data_path"]) if "data_path" in basic else Path(basic["dataset_dir"]) / basic["dataset"]
        text = file.read_text()
        n = len(text.splitlines()) if file.suffix == ".jsonl" else len(json.loads(text))
        assert f"usable: {n}" in out and "bad records: none" in out, out
