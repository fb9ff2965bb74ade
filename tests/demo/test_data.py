"""The demo's synthetic VQA set: balanced, drawn where it says, readable by the data pipeline."""

import json
from collections import Counter

import pytest

from mm_core.data.config import AttrParameters
from mm_core.data.records import iter_raw_records, parse_record
from mm_core.demo.data import (
    COLOURS,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    Scene,
    chance_accuracy,
    draw,
    make_scenes,
    write_demo_data,
)


def test_scenes_cover_every_combination_equally():
    combos = len(SHAPES) * len(COLOURS) * len(POSITIONS)
    scenes = make_scenes(2 * combos, image_size=112, seed=3)
    counts = Counter((s.shape, s.colour, s.position) for s in scenes)
    assert len(counts) == combos and set(counts.values()) == {2}


def test_scenes_are_deterministic_and_seed_dependent():
    assert make_scenes(20, image_size=112, seed=1) == make_scenes(20, image_size=112, seed=1)
    assert make_scenes(20, image_size=112, seed=1) != make_scenes(20, image_size=112, seed=2)


@pytest.mark.parametrize("position", list(POSITIONS))
def test_shape_stays_in_its_place(position):
    for s in make_scenes(200, image_size=112, seed=0):
        if s.position != position:
            continue
        fx, fy = POSITIONS[position]
        # the centre is nearer to its own anchor than to any other place's anchor
        dists = {p: (s.cx - ax * 112) ** 2 + (s.cy - ay * 112) ** 2 for p, (ax, ay) in POSITIONS.items()}
        assert min(dists, key=dists.get) == position
        assert s.radius <= s.cx <= 112 - s.radius and s.radius <= s.cy <= 112 - s.radius


@pytest.mark.parametrize("shape", SHAPES)
def test_drawing_has_the_colour_at_the_centre_and_background_far_away(shape):
    scene = Scene(shape, "blue", "left", cx=30.0, cy=60.0, radius=18.0)
    img = draw(scene, 112)
    assert img.size == (112, 112) and img.mode == "RGB"
    r, g, b = img.getpixel((30, 62))
    assert max(abs(r - COLOURS["blue"][0]), abs(g - COLOURS["blue"][1]), abs(b - COLOURS["blue"][2])) < 10
    assert img.getpixel((100, 10)) == (255, 255, 255)


def test_shapes_differ_in_their_pixels():
    pics = {s: list(draw(Scene(s, "red", "top", 56.0, 30.0, 18.0), 112).getdata()) for s in SHAPES}
    assert pics["circle"] != pics["square"] != pics["triangle"] != pics["circle"]


def test_write_demo_data_files_and_records(tmp_path):
    data = write_demo_data(tmp_path / "data", train_images=12, eval_images=5, image_size=112, seed=0)
    train = json.loads(data.train_json.read_text())
    evals = json.loads(data.eval_json.read_text())
    assert len(train) == 12 * len(QUESTIONS) == data.train_records and len(evals) == 5 * len(QUESTIONS)
    prompts = [json.loads(line) for line in data.eval_prompts.read_text().splitlines()]
    assert len(prompts) == len(evals)
    for rec, p in zip(evals, prompts):  # the infer batch asks what the eval records answer
        assert rec["images"] == p["images"] and rec["messages"][0]["content"] == "<image>" + p["prompt"]
        assert rec["messages"][1]["content"] == p["expected"] and " " not in p["expected"]
    from PIL import Image

    train_imgs = {r["images"][0] for r in train}
    eval_imgs = {r["images"][0] for r in evals}
    assert not train_imgs & eval_imgs and len(train_imgs) == 12
    for rel in train_imgs | eval_imgs:
        with Image.open(data.root / rel) as im:
            assert im.format == "PNG" and im.size == (112, 112)
    # the records parse with the data pipeline's reader; media resolve against the data dir
    raws = list(iter_raw_records(data.train_json))
    sample = parse_record(raws[0], AttrParameters(), str(data.root))
    assert sample.messages[1]["role"] == "assistant" and (data.root / sample.images[0]).is_file()


def test_held_out_images_are_new_pictures(tmp_path):
    data = write_demo_data(tmp_path, train_images=24, eval_images=24, image_size=112, seed=0)
    train = {(data.root / f"images/train/{i:05d}.png").read_bytes() for i in range(24)}
    assert not any((data.root / f"images/eval/{i:05d}.png").read_bytes() in train for i in range(24))


def test_chance_accuracy():
    assert chance_accuracy() == pytest.approx((1 / 3 + 1 / 4 + 1 / 4) / 3)


def test_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        write_demo_data(tmp_path, train_images=0, eval_images=1)
