"""GLM-4.5V trains on the data pipeline (mm_core.data): records read from a JSONL file through the
GLM tokenizer and processor, micro-batches that mix a text-only record with an image record (PIL
images made here), in map-style and in streaming mode (``basic_parameters.streaming``).

Reference: transformers' ``Glm4vMoeForConditionalGeneration`` on the pipeline's own micro-batches
(cross-entropy + ``router_aux_loss_coef`` x its balance loss, the coefficient left to the model
config): the first step's loss (``default`` loss type: the mean of the micro-batches' losses) must
be the mean of transformers' losses. The streaming run must see the same samples and give the
same two steps (losses, gradient norms, tokens per expert) as the map-style run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

COEF = 0.05
SEQ = 128


def _records(root: Path) -> Path:
    """8 records alternating image / text-only (images of 2 sizes), so each 2-row micro-batch mixes them."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    with open(root / "train.jsonl", "w") as f:
        for i in range(8):
            answer = f"{'red' if i % 3 else 'blue'} number {i}" + " and more" * (i % 3)
            if i % 2 == 0:
                h, w = (56, 84) if i % 4 else (84, 56)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
                rec = {"images": [f"img/{i}.png"], "messages": [
                    {"role": "user", "content": "<image>Which colour is this?"},
                    {"role": "assistant", "content": answer}]}
            else:
                rec = {"messages": [{"role": "user", "content": f"Name a colour, {i}."},
                                    {"role": "assistant", "content": answer}]}
            f.write(json.dumps(rec) + "\n")
    return root


def _data_config(root: Path, hf: Path, streaming: bool) -> dict[str, Any]:
    return {"preprocess_parameters": {"model_name_or_path": str(hf)},
            "basic_parameters": {"dataset_dir": str(root / "data"), "dataset": "train.jsonl", "streaming": streaming,
                                 "cache_dir": str(root / "cache")},
            "dataloader_param": {"shuffle": False, "sampler_type": "sequential"}}


def _train_config(root: Path, hf: Path, streaming: bool) -> dict[str, Any]:
    return {"model": {"hf_dir": str(hf)},
            "data": {"source": "mllm", "config": _data_config(root, hf, streaming)},
            "parallel": {"device": "cpu"},
            "training": {"micro_batch_size": 2, "global_batch_size": 4, "seq_length": SEQ, "train_iters": 2,
                         "lr": 3e-3, "lr_schedule": "constant", "clip_grad": 1.0, "dtype": "fp32", "seed": 7,
                         "loss_type": "default", "adam_eps": 1e-4},
            "output": {"progress_bar": False, "log_interval": 100}}


def _train(config_file: Path) -> list[dict[str, Any]]:
    """The engine in this process, on its own data pipeline (no fixed micro-batches)."""
    from mm_core.engine.config import parse_finetune_config
    from mm_core.engine.trainer import Trainer, shutdown

    finished = False
    try:
        records = Trainer(parse_finetune_config(["--config", str(config_file)])).train()
        finished = True
    finally:
        shutdown(finished)
    return records


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import yaml

    from mm_glm.testing_tokenizer import save_glm_processor
    from mm_glm.tiny import PROCESSOR_PIXELS, processor_config_overrides
    from mm_glm.tiny_moe import save_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("glm45v_data")
    with torch.random.fork_rng(devices=[]):
        hf = save_tiny_model(root / "hf", vision_depth=1, text_layers=3, aux_coef=COEF, **processor_config_overrides())
    save_glm_processor(hf, **PROCESSOR_PIXELS)
    _records(root / "data")
    records = {}
    for name, streaming in (("map", False), ("streaming", True)):
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_train_config(root, hf, streaming), sort_keys=False))
        records[name] = _train(path)
    return {"root": root, "hf": hf, "records": records}


def test_micro_batches_mix_text_only_and_image_records(runs: dict[str, Any]) -> None:
    from mm_core.data import build_dataloader

    loader = build_dataloader(_data_config(runs["root"], runs["hf"], False), seq_len=SEQ, micro_batch_size=2,
                              model=_spec())
    for _ in range(4):  # both steps' micro-batches
        batch = next(loader)
        images = int(batch["image_grid_thw"].shape[0])
        assert batch["input_ids"].shape[0] == 2 and images == 1, "one image record and one text-only record"


def _spec():
    from mm_core.plugins import get_plugin_manager

    return get_plugin_manager().model("glm4v_moe")


def test_first_step_loss_is_transformers_loss_on_the_pipelines_micro_batches(runs: dict[str, Any]) -> None:
    import transformers

    from mm_core.data import build_dataloader
    from mm_glm.template import mm_token_type_ids

    config = json.loads((runs["hf"] / "config.json").read_text())
    loader = build_dataloader(_data_config(runs["root"], runs["hf"], False), seq_len=SEQ, micro_batch_size=2,
                              model=_spec())
    hf = transformers.Glm4vMoeForConditionalGeneration.from_pretrained(runs["hf"], dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for _ in range(2):  # gradient accumulation 2: the first step's micro-batches
            b = next(loader)
            types = mm_token_type_ids(b["input_ids"], config["image_token_id"], config["video_start_token_id"],
                                      config["video_end_token_id"])
            out = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                     pixel_values=b["pixel_values"], image_grid_thw=b["image_grid_thw"], mm_token_type_ids=types,
                     output_router_logits=True)
            assert float(out.aux_loss) > 0
            losses.append(float(out.loss))
    assert runs["records"]["map"][0]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_streaming_trains_like_map_style(runs: dict[str, Any]) -> None:
    got, want = runs["records"]["streaming"], runs["records"]["map"]
    assert len(got) == len(want) == 2
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-6), key
    assert [r["tokens_per_expert"] for r in got] == [r["tokens_per_expert"] for r in want]
    assert [r["loss_tokens"] for r in got] == [r["loss_tokens"] for r in want]
