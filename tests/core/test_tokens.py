import pytest
from fake_clip import BOS, EOS, FakeTokenizer, comfy_stream

from p2p_core.align import swap_mapping
from p2p_core.errors import PromptToPromptError
from p2p_core.tokens import MAX_CHUNKS, PromptTokens, locate_words, readable


@pytest.fixture
def tok():
    return FakeTokenizer()


def prompt(text, tok, pieces=None, pad=EOS):
    pieces = pieces or [text]
    return locate_words(text, comfy_stream(pieces, tok, pad=pad), pieces, tok)


def test_words_follow_the_start_token(tok):
    p = prompt("a cat riding a bicycle", tok)
    assert [w.text for w in p.words] == ["a", "cat", "riding", "a", "bicycle"]
    assert [w.positions for w in p.words] == [(1,), (2,), (3, 4), (5,), (6, 7)]  # riding/bicycle: 2 pieces
    assert p.length == 77 and p.ids[0] == BOS and p.ids[8] == EOS


def test_multi_token_word_gives_all_its_positions(tok):
    p = prompt("a hippopotamus", tok)
    assert p.find("hippopotamus", tok) == (2, 3, 4)


def test_repeated_word_gives_every_occurrence(tok):
    p = prompt("a cat and a cat", tok)
    assert p.find("cat", tok) == (2, 5)


def test_punctuation_glued_to_a_word_still_matches(tok):
    p = prompt("a cat, sleeping", tok)
    assert p.words[1].text == "cat,"
    assert p.find("cat", tok) == (2,)


def test_word_inside_another_word_does_not_match(tok):
    p = prompt("a bobcatcat", tok)  # pieces 'bobca' + 'tcat</w>': 'cat' is no word here
    with pytest.raises(PromptToPromptError, match="not a word of the prompt"):
        p.find("cat", tok)


def test_phrase_of_several_words(tok):
    p = prompt("a red car and a red bus", tok)
    assert p.find("red car", tok) == (2, 3)


def test_weighted_segments_keep_word_positions(tok):
    pieces = ["a ", "red", " car"]  # what ComfyUI parses from "a (red:1.2) car"
    p = prompt("a (red:1.2) car", tok, pieces)
    assert [w.text for w in p.words] == ["a", "red", "car"]
    assert p.find("red", tok) == (2,)


def test_long_prompt_positions_cross_the_chunk_boundary(tok):
    text = " ".join(["dog"] * 80) + " cat"
    p = prompt(text, tok)
    assert p.length == 154
    assert p.find("cat", tok) == (77 + 1 + 80 - 75,)  # 75 dogs fill chunk 1, BOS of chunk 2 at 77
    assert p.ids[76] == EOS and p.ids[77] == BOS


def test_small_segment_moves_whole_to_the_next_chunk(tok):
    pieces = [" ".join(["dog"] * 74) + " ", "big cat"]  # 'big cat' (2 tokens) does not fit after 74 dogs
    p = prompt("...", tok, pieces)
    assert p.find("big cat", tok) == (78, 79)
    assert p.ids[75] == EOS


def test_sd2_zero_padding_is_not_a_word(tok):
    p = prompt("a cat", tok, pad=0)
    assert [w.positions for w in p.words] == [(1,), (2,)]
    assert p.special_positions()[:3] == (0, 3, 4)


def test_a_prompt_of_more_chunks_than_an_edit_takes_is_refused(tok):
    text = "cat " * (MAX_CHUNKS * 75 + 1)  # one token into another chunk
    assert len(comfy_stream([text], tok)) == MAX_CHUNKS + 1
    with pytest.raises(PromptToPromptError, match=f"is {MAX_CHUNKS + 1} chunks of 75 tokens long"):
        locate_words(text, comfy_stream([text], tok), [text], tok)
    assert len(prompt("cat " * (MAX_CHUNKS * 75), tok).words) == MAX_CHUNKS * 75


@pytest.mark.parametrize("weight", [float("nan"), float("inf")])
def test_a_non_finite_word_weight_is_refused(tok, weight):
    """'(cat:nan)' is parsed by ComfyUI into a NaN weight, which it multiplies into the conditioning."""
    stream = [[(token, weight if word_id == 2 else 1.0, word_id) for token, _, word_id in chunk]
              for chunk in comfy_stream(["a ", "cat"], tok)]
    with pytest.raises(PromptToPromptError, match=f"weight {weight}; write a finite weight"):
        locate_words(f"a (cat:{weight})", stream, ["a ", "cat"], tok)


def test_missing_word_names_the_words_of_the_prompt(tok):
    p = prompt("a cat riding a bicycle", tok)
    with pytest.raises(PromptToPromptError, match="'dog' is not a word.*'bicycle'"):
        p.find("dog", tok)


def test_empty_word_is_an_error(tok):
    p = prompt("a cat", tok)
    with pytest.raises(PromptToPromptError, match="empty word"):
        p.find("  ", tok)


def test_empty_prompt_has_no_words(tok):
    assert prompt("", tok, pieces=[""]).words == ()


def test_byte_level_pieces_read_as_the_characters_they_stand_for():
    """CLIP's BPE spells bytes as Latin-1 lookalikes: 'é' is 'Ã©', '🐱' is 'ðŁĲ±', and '本' is split between
    two pieces ('æľ', '¬'). People are shown the characters; a piece that only starts one shows its bytes."""
    assert readable(["a</w>", "cafÃ©</w>", "ðŁĲ±</w>"]) == ["a", "café", "🐱"]
    assert readable(["æĹ¥", "æľ", "¬</w>"]) == ["日", "<e6 9c>", "本"]
    assert readable(["</w>"]) == [""]  # an embedding's placeholder piece


# --- T5's SentencePiece (Flux): no start token, the first piece of a word marked, one chunk -----------------

T5_PIECES = {"a": [(3, "\u2581"), (9, "a")], "cat,": [(100, "\u2581cat"), (6, ",")], "cat": [(100, "\u2581cat")],
             "bobcat": [(200, "\u2581bob"), (101, "cat")], "sits": [(300, "\u2581sits")],
             "hippopotamus,": [(500, "\u2581hippo"), (501, "potamus"), (6, ",")]}


def t5_tokenize(text):
    return [piece for word in text.split() for piece in T5_PIECES[word]]


def t5_prompt(text, length=12):
    tokens = [(tid, 1.0, 1) for tid, _ in t5_tokenize(text)] + [(1, 1.0, 0)]
    return locate_words(text, [tokens + [(0, 1.0, 0)] * (length - len(tokens))], [text], t5_tokenize)


def test_t5_words_start_at_column_zero_and_the_context_is_one_chunk():
    p = t5_prompt("a cat, sits")
    assert [w.positions for w in p.words] == [(0, 1), (2, 3), (4,)]
    assert p.chunk == 12 and p.padding_positions() == tuple(range(6, 12))  # the end token (5) is no padding


def test_t5_word_boundaries_are_its_start_marks_and_punctuation():
    p = t5_prompt("a cat, bobcat sits")
    assert p.find("cat", t5_tokenize) == (2,)  # before the comma, not the end of 'bobcat'
    assert p.find("a", t5_tokenize) == (0, 1)


def test_a_t5_piece_shows_its_text_and_a_lone_start_mark_shows_as_itself():
    assert readable(["\u2581", "a", "\u2581cat", ","]) == ["\u2581", "a", "cat", ","]


# --- a joined context (SD3: CLIP's chunks, then T5's tokens) -------------------------------------------------

def sd3_prompt(text, tok):
    return PromptTokens.joined(text, [prompt(text, tok), t5_prompt(text)])


def test_a_joined_context_places_every_word_in_each_stream_after_the_one_before(tok):
    p = sd3_prompt("a cat, sits", tok)
    assert p.length == 77 + 12 and [offset for offset, _ in p.parts] == [0, 77]
    assert [w.positions for w in p.words] == [(1,), (2, 3), (4,), (77, 78), (79, 80), (81,)]
    assert p.find("cat", (tok, t5_tokenize)) == (2, 79)  # each stream with its own tokenizer
    assert p.padding_positions() == tuple(range(6, 77)) + tuple(range(77 + 6, 89))


def test_a_word_swap_in_a_joined_context_maps_each_stream_within_itself(tok):
    """Words of other token counts in the two prompts (so each stream's special tokens differ in number): every
    stream still maps within itself, its words to its words and its specials to its specials."""
    source, target = sd3_prompt("a cat, sits", tok), sd3_prompt("a hippopotamus, sits", tok)
    mapping = swap_mapping(source, target)
    assert not mapping.matrix[:77, 77:].any() and not mapping.matrix[77:, :77].any()  # block-diagonal
    t5 = mapping.matrix[77:, 77:]
    assert t5[2:4, 2:5].flatten().tolist() == pytest.approx([1 / 3] * 6)  # 'cat,' spread over 'hippopotamus,'
    assert bool(mapping.mapped.all())
