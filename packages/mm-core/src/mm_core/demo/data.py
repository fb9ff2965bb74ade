"""The demo's synthetic visual question answering set: one coloured shape per image, three questions.

Every image holds one shape (circle, square, triangle) of one colour at one of four places, with
its size and exact position jittered, so held-out images are new pictures rather than copies of
training ones. Each image gets three one-word questions (shape, colour, place). Images are real
PNG files and the questions are mllm-format JSON, so users can open both and the demo trains
through the same data pipeline as any other dataset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
}
# centre of the shape as a fraction of the image side (x, y)
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
}
QUESTIONS: dict[str, str] = {
    "shape": "What shape is in the image?",
    "colour": "What colour is the shape?",
    "position": "Where is the shape?",
}
RADIUS = (0.15, 0.21)  # half the shape's bounding box, as a fraction of the image side
JITTER = 0.04  # how far the centre may move from its place's anchor, same unit
BACKGROUND = (255, 255, 255)
SUPERSAMPLE = 4  # shapes are drawn this many times larger and scaled down: smooth edges


@dataclass(frozen=True)
class Scene:
    """What one image shows, and exactly where (pixels of the final image)."""

    shape: str
    colour: str
    position: str
    cx: float
    cy: float
    radius: float  # half the side of the shape's bounding box

    def answer(self, kind: str) -> str:
        """The one-word answer to question ``kind`` (``shape``, ``colour`` or ``position``)."""
        return {"shape": self.shape, "colour": self.colour, "position": self.position}[kind]


def chance_accuracy() -> float:
    """Exact-match accuracy of guessing uniformly, averaged over the three question kinds."""
    return (1 / len(SHAPES) + 1 / len(COLOURS) + 1 / len(POSITIONS)) / 3


def make_scenes(n: int, *, image_size: int, seed: int) -> list[Scene]:
    """``n`` scenes covering every (shape, colour, position) combination equally often, shuffled.

    Size and position jitter are bounded so the shape stays inside its quarter of the image and
    the place word is never ambiguous.
    """
    rng = random.Random(seed)
    combos = [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]
    picks: list[tuple[str, str, str]] = []
    while len(picks) < n:
        block = list(combos)
        rng.shuffle(block)
        picks += block
    scenes = []
    for shape, colour, position in picks[:n]:
        fx, fy = POSITIONS[position]
        radius = image_size * rng.uniform(*RADIUS)
        jitter = image_size * JITTER
        scenes.append(Scene(shape, colour, position, cx=fx * image_size + rng.uniform(-jitter, jitter),
                            cy=fy * image_size + rng.uniform(-jitter, jitter), radius=radius))
    return scenes


def draw(scene: Scene, image_size: int) -> Any:
    """The scene as an RGB ``PIL.Image`` of ``image_size`` x ``image_size`` pixels."""
    from PIL import Image, ImageDraw

    big = image_size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    pen = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * SUPERSAMPLE, scene.cy * SUPERSAMPLE, scene.radius * SUPERSAMPLE
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        s = r * 0.85  # a square of the same area feel as the circle
        pen.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif scene.shape == "triangle":
        pen.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape '{scene.shape}'; known: {', '.join(SHAPES)}")
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def qa_pairs(scene: Scene) -> Iterator[tuple[str, str, str]]:
    """(kind, question, answer) for the three questions about ``scene``."""
    for kind, question in QUESTIONS.items():
        yield kind, question, scene.answer(kind)


def mllm_record(image: str, question: str, answer: str) -> dict[str, Any]:
    """One training record in the mllm format. The image comes first and with no newline after
    it, exactly how ``mm-run infer`` renders a prompt, so training and inference see the same text."""
    return {"images": [image], "messages": [{"role": "user", "content": f"<image>{question}"},
                                            {"role": "assistant", "content": answer}]}


@dataclass
class DemoData:
    """Where the written files are and what they hold."""

    root: Path
    train_json: Path  # mllm records for `mm-run finetune`
    eval_json: Path  # the same format, held-out images
    eval_prompts: Path  # JSONL batch input for `mm-run infer` with the expected answers
    train_images: int
    eval_images: int
    image_size: int

    @property
    def train_records(self) -> int:
        return self.train_images * len(QUESTIONS)

    @property
    def eval_records(self) -> int:
        return self.eval_images * len(QUESTIONS)


def _write_split(root: Path, split: str, scenes: list[Scene], image_size: int) -> tuple[list[dict], list[dict]]:
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    records, prompts = [], []
    for i, scene in enumerate(scenes):
        rel = f"images/{split}/{i:05d}.png"
        draw(scene, image_size).save(root / rel, format="PNG")
        for kind, question, answer in qa_pairs(scene):
            records.append(mllm_record(rel, question, answer))
            prompts.append({"prompt": question, "images": [rel], "kind": kind, "expected": answer,
                            "scene": asdict(scene)})
    return records, prompts


def write_demo_data(root: str | Path, *, train_images: int, eval_images: int, image_size: int = 112,
                    seed: int = 0) -> DemoData:
    """Draw the train and held-out images as PNG files and write the question files under ``root``.

    Train and eval scenes come from different seeds; each file is written whole with a final
    rename so an interrupted run never leaves a half-written JSON that looks complete.
    """
    if train_images < 1 or eval_images < 1:
        raise ValueError(f"need at least one train and one eval image, got {train_images} and {eval_images}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train, _ = _write_split(root, "train", make_scenes(train_images, image_size=image_size, seed=seed),
                            image_size)
    evals, prompts = _write_split(root, "eval", make_scenes(eval_images, image_size=image_size, seed=seed + 7919),
                                  image_size)
    out = DemoData(root, root / "train.json", root / "eval.json", root / "eval_prompts.jsonl",
                   train_images, eval_images, image_size)
    _atomic_write(out.train_json, json.dumps(train, indent=1))
    _atomic_write(out.eval_json, json.dumps(evals, indent=1))
    _atomic_write(out.eval_prompts, "".join(json.dumps(p) + "\n" for p in prompts))
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
