"""Word positions on ComfyUI's real tokenizers (CLIP-L, SD2's OpenCLIP-H layout, SDXL's L and G)."""

from __future__ import annotations

import executor
import pack
import pytest
import tiny
import torch

tiny.import_comfy()

PROMPTS = [
    "a photo of a hippopotamus",
    "a cat and a cat, sleeping on a mat.",
    "a (red:1.3) car next to a ((blue)) bus",
    "a castle, " + ", ".join(["intricate detailed stonework"] * 20) + ", at sunset",
    "a red\x1ccircle \x1f and\x00 a\x7fsquare\u2028on white",
]


@pytest.fixture(scope="module")
def text():
    return pack.module("runtime.text")


def stream_of(clip, prompt, key):
    return [entry for chunk in clip.tokenize(prompt, return_word_ids=True)[key] for entry in chunk]


@pytest.mark.parametrize("family,key", [("sd1", "l"), ("sd2", "h"), ("sdxl", "l"), ("sdxl", "g")])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["multi-token", "repeats", "weights", "long", "control-characters"])
def test_words_cover_exactly_the_prompt_tokens(text, family, key, prompt):
    clip = executor.tiny_bundle(family)[1]
    tokens = text.tokenize_prompt(clip, prompt)
    stream = stream_of(clip, prompt, key)
    assert tokens.length == len(stream)
    for word in tokens.words:
        assert [stream[p][0] for p in word.positions] == list(word.ids), word.text
    content = [p for p, (_, _, word_id) in enumerate(stream) if word_id > 0]
    assert sorted(p for w in tokens.words for p in w.positions) == content


def test_find_on_the_real_vocabulary(text):
    clip = executor.tiny_bundle("sd1")[1]
    tokenize = text.word_tokenizer(clip)
    hippo = text.tokenize_prompt(clip, PROMPTS[0])
    assert len(hippo.find("hippopotamus", tokenize)) > 1
    repeats = text.tokenize_prompt(clip, PROMPTS[1])
    assert len(repeats.find("cat", tokenize)) == 2
    assert repeats.find("mat", tokenize) == repeats.words[-1].positions[:1]  # "mat." is mat + "."
    weighted = text.tokenize_prompt(clip, PROMPTS[2])
    assert [w.text for w in weighted.words][:3] == ["a", "red", "car"]
    assert weighted.find("blue", tokenize) == weighted.words[6].positions


def test_words_past_the_first_chunk(text):
    clip = executor.tiny_bundle("sd1")[1]
    long = text.tokenize_prompt(clip, PROMPTS[3])
    sunset = long.find("sunset", text.word_tokenizer(clip))
    assert long.length == 154 and sunset[0] > 77


def test_sd2_pads_with_zero_yet_words_stay_words(text):
    clip = executor.tiny_bundle("sd2")[1]
    tokens = text.tokenize_prompt(clip, "a cat")
    assert tokens.ids[3] == 49407 and tokens.ids[4:7] == (0, 0, 0)  # EOS, then zero padding
    assert [w.positions for w in tokens.words] == [(1,), (2,)]


def test_words_after_an_embedding_are_words_of_their_own(text, tmp_path):
    """ComfyUI tokenizes 'embedding:name cat riding' as the embedding, then 'cat riding' as a piece of its own;
    those words used to be lost (and 'cat' was 'not a word of the prompt')."""
    import safetensors.torch

    safetensors.torch.save_file({"clip_l": torch.ones(2, tiny.CLIP_HIDDEN)}, str(tmp_path / "tinystyle.safetensors"))
    clip = tiny.make_clip("sd1")
    clip.tokenizer.clip_l.embedding_directory = [str(tmp_path)]
    tokens = text.tokenize_prompt(clip, "a photo of embedding:tinystyle cat riding")
    assert [w.text for w in tokens.words] == ["a", "photo", "of", "embedding:tinystyle", "cat", "riding"]
    assert len(tokens.words[3].tokens) == 2 and tokens.token_texts()[3:5] == ["embedding:tinystyle"] * 2
    assert tokens.find("cat", text.word_tokenizer(clip)) == tokens.words[4].positions


@pytest.mark.parametrize("prompt", ["a café in München", "a 🐱 on a 日本 mat", "naïve ✨"])
def test_token_texts_are_the_characters_they_stand_for(text, prompt):
    """Byte-level BPE shows 'é' as 'Ã©'; the texts shown to people are the characters again: a word's token
    texts join up to the word (CLIP lower-cases), a token holding only part of a character shows its bytes."""
    clip = executor.tiny_bundle("sd1")[1]
    tokens = text.tokenize_prompt(clip, prompt)
    texts = iter(tokens.token_texts())
    shown = ["".join(t for t in (next(texts) for _ in word.tokens) if not t.startswith("<")) for word in tokens.words]
    assert shown == prompt.lower().split()


def test_a_character_split_between_tokens_shows_where_it_is_complete(text):
    clip = executor.tiny_bundle("sd1")[1]
    assert text.tokenize_prompt(clip, "café 日本").token_texts() == ["café", "日", "<e6 9c>", "本"]
