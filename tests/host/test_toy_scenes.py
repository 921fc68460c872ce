"""The toy world's scene generator and its measurement (toy/)."""

from __future__ import annotations

import numpy as np
import pack
import pytest


@pytest.fixture(scope="module")
def toy():
    return pack.module("toy.scenes"), pack.module("toy.measure")


def test_scenes_are_deterministic_from_the_seed(toy):
    scenes, _ = toy
    first, second = (scenes.random_scene(np.random.default_rng(5)) for _ in range(2))
    assert first == second
    assert np.array_equal(scenes.draw(first)[0], scenes.draw(second)[0])


def test_captions_name_the_objects_left_to_right_and_parse_back(toy):
    scenes, _ = toy
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = scenes.random_scene(rng)
        ordered = sorted(scene.things, key=lambda t: t.x)
        for caption in (scene.caption, scene.background_first_caption):
            parsed = scenes.parse_caption(caption)
            assert [t.words for t in parsed.things] == [t.words for t in ordered], caption
            assert parsed.background == scene.background, caption


def test_caption_outside_the_grammar_is_refused_naming_the_word(toy):
    scenes, _ = toy
    with pytest.raises(ValueError, match="purple"):
        scenes.parse_caption("a big purple circle on a white background")
    with pytest.raises(ValueError, match="purple"):
        scenes.parse_caption("on a white background, a big purple circle")


def test_measurement_reads_every_drawn_scene_correctly(toy):
    """Colour segmentation finds each object's colour, shape, size and mask on 300 drawn scenes."""
    scenes, measure = toy
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = scenes.random_scene(rng)
        image, masks = scenes.draw(scene)
        assert measure.check(image, scene.caption) == measure.Check(True, True, True, True)
        found = {f.colour: f for f in measure.objects(image)}
        ordered = sorted(scene.things, key=lambda t: t.x)  # the order of the masks
        assert sorted((f.colour, f.shape, f.size) for f in found.values()) == sorted(
            (t.colour, t.shape, t.size) for t in ordered)
        for thing, mask in zip(ordered, masks):
            seen = found[thing.colour].mask
            assert (seen & mask).sum() / (seen | mask).sum() > 0.95


def test_measurement_sees_a_wrong_picture(toy):
    scenes, measure = toy
    scene = scenes.Scene((scenes.Thing("big", "red", "circle", 40, 40), scenes.Thing("small", "blue", "square", 90,
                                                                                       90)))
    image = scenes.draw(scene)[0]
    assert not measure.check(image, scene.with_thing(0, shape="square").caption).shapes
    assert not measure.check(image, scene.with_thing(1, colour="green").caption).colours
    assert not measure.check(image, scenes.Scene(scene.things[:1]).caption).count


def test_a_scene_drawn_larger_is_the_same_scene_and_measures_as_it(toy):
    """The joint-attention demo model draws the world at twice its size: the larger drawing, its masks and what
    the measure reads from it are the scene's (the measure averages it down to the world's size)."""
    scenes, measure = toy
    rng = np.random.default_rng(2)
    for _ in range(100):
        scene = scenes.random_scene(rng)
        (small, small_masks), (large, large_masks) = scenes.draw(scene), scenes.draw(scene, 2)
        assert large.shape == (2 * scenes.SIZE, 2 * scenes.SIZE, 3)
        assert measure.check(large, scene.caption) == measure.Check(True, True, True, True)
        assert np.abs(measure.at_scene_size(large).astype(int) - small).mean() < 3
        for mask, larger in zip(small_masks, large_masks):
            halved = larger.reshape(scenes.SIZE, 2, scenes.SIZE, 2).mean((1, 3)) > 0.5
            assert (halved & mask).sum() / (halved | mask).sum() > 0.85  # rasterised apart: edges differ
