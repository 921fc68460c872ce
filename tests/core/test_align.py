import pytest
import torch
from fake_clip import FakeTokenizer, comfy_stream

from p2p_core.align import global_alignment, identity_mapping, refine_mapping, swap_mapping
from p2p_core.errors import PromptToPromptError
from p2p_core.tokens import locate_words


@pytest.fixture
def tok():
    return FakeTokenizer()


def prompt(text, tok):
    return locate_words(text, comfy_stream([text], tok), [text], tok)


def sources_of(mapping, column):
    """{source column: weight} feeding one target column."""
    weights = mapping.matrix[:, column]
    return {int(i): float(weights[i]) for i in torch.nonzero(weights).flatten()}


def test_swap_maps_unchanged_words_and_specials_one_to_one(tok):
    m = swap_mapping(prompt("a cat on a mat", tok), prompt("a dog on a mat", tok))
    assert all(sources_of(m, t) == {t: 1.0} for t in range(77))
    assert bool(m.mapped.all())


def test_swap_with_different_token_counts_spreads_the_source_word(tok):
    # 'cat' is 1 token, 'hippopotamus' 3 ('hippo', 'potam', 'us</w>'): each gets a third of 'cat'
    m = swap_mapping(prompt("a cat swims", tok), prompt("a hippopotamus swims", tok))
    assert [sources_of(m, t) for t in (2, 3, 4)] == [{2: pytest.approx(1 / 3)}] * 3
    assert sources_of(m, 5) == {3: 1.0}  # 'swims' keeps its source word


def test_swap_of_the_last_word_keeps_the_end_tokens_aligned(tok):
    # The official mapper's bug case: after the last swapped word changes token count, its running offset
    # wrote M[j, j], so EOS and padding took attention from the wrong columns. Here EOS -> EOS.
    source, target = prompt("a photo of a cat", tok), prompt("a photo of a hippopotamus", tok)
    m = swap_mapping(source, target)
    src_eos, tgt_eos = 6, 8
    assert sources_of(m, tgt_eos) == {src_eos: 1.0}
    assert sources_of(m, 9) == {7: 1.0} and sources_of(m, 76) == {74: 1.0}
    assert bool(m.mapped.all())


def test_swap_to_a_shorter_word_leaves_surplus_pads_on_their_own_maps(tok):
    m = swap_mapping(prompt("a photo of a hippopotamus", tok), prompt("a photo of a cat", tok))
    assert sources_of(m, 6) == {8: 1.0}  # EOS -> EOS
    assert not bool(m.mapped[75:].any())  # the source has no pads left for the last two


def test_swap_needs_the_same_word_count_and_points_to_refine(tok):
    with pytest.raises(PromptToPromptError, match="same number of words.*RefineEdit"):
        swap_mapping(prompt("a cat", tok), prompt("a big cat", tok))


def test_refine_leaves_inserted_words_on_their_own_maps(tok):
    source, target = prompt("a house in the snow", tok), prompt("a wooden house in the snow", tok)
    m = refine_mapping(source, target)
    wooden = target.find("wooden", tok)
    assert not any(bool(m.mapped[p]) for p in wooden)
    assert sources_of(m, target.find("house", tok)[0]) == {source.find("house", tok)[0]: 1.0}
    assert sources_of(m, 0) == {0: 1.0}
    assert int(m.mapped.sum()) == 77 - len(wooden)


def test_refine_of_identical_prompts_is_the_identity(tok):
    p = prompt("a house", tok)
    assert torch.equal(refine_mapping(p, p).matrix, identity_mapping(p).matrix)


def test_global_alignment_matches_by_hand():
    assert global_alignment((1, 2, 3), (1, 4, 2, 3)) == [(0, 0), (1, 2), (2, 3)]
    assert global_alignment((1, 2, 3), (1, 3)) == [(0, 0), (2, 1)]
    assert global_alignment((5, 6), (7, 8)) == []


def _alignment_by_the_book(x, y):
    """Needleman-Wunsch cell by cell, as the official code writes it (gap 0, match 1, mismatch -1)."""
    score = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    trace = [[1] * (len(y) + 1)] + [[2] + [0] * len(y) for _ in x]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i][j] = max(left, up, diag)
            trace[i][j] = 1 if score[i][j] == left else 2 if score[i][j] == up else 3
    pairs, i, j = [], len(x), len(y)
    while i > 0 or j > 0:
        step = trace[i][j] if i and j else (1 if j else 2)
        i, j = (i - 1, j - 1) if step == 3 else (i, j - 1) if step == 1 else (i - 1, j)
        if step == 3:
            pairs.append((i, j))
    return pairs[::-1]


def test_global_alignment_agrees_with_the_cell_by_cell_table_ties_included():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, m = torch.randint(0, 12, (2,), generator=generator).tolist()
        x = tuple(torch.randint(0, 4, (n,), generator=generator).tolist())  # few ids: many ties
        y = tuple(torch.randint(0, 4, (m,), generator=generator).tolist())
        assert global_alignment(x, y) == _alignment_by_the_book(x, y), (x, y)


def test_global_alignment_ties_prefer_the_latest_match():
    # x = [1], y = [1, 1]: both y tokens could take x's 1; the official traceback (left first from the
    # end) inserts the last y token and aligns the first.
    assert global_alignment((1,), (1, 1)) == [(0, 0)]


def test_refine_maps_padding_column_j_to_source_column_j_as_the_official_code(tok):
    """The official alignment runs over start, words and end; padding column j then takes source column j."""
    source, target = prompt("a house in the snow", tok), prompt("a wooden house in the snow", tok)  # +2 tokens
    m = refine_mapping(source, target)
    assert sources_of(m, 8) == {6: 1.0}  # the end token follows its aligned end token
    assert all(sources_of(m, j) == {j: 1.0} for j in range(9, 77))  # padding is not shifted


def test_refine_after_a_deletion_leaves_padding_that_lands_on_source_words_on_its_own_maps(tok):
    source, target = prompt("a big wooden house", tok), prompt("a house", tok)  # 3 tokens fewer
    m = refine_mapping(source, target)
    assert sources_of(m, 3) == {6: 1.0}  # end token -> end token
    assert not bool(m.mapped[4:7].any())  # source columns 4 to 6 are 'wooden', 'house' and the end token
    assert all(sources_of(m, j) == {j: 1.0} for j in range(7, 77))


def with_embedding(tok, name):
    """'a photo of embedding:NAME cat' as ComfyUI tokenizes it: the embedding's two vectors stand in its tokens."""
    pieces = ["a photo of ", f"embedding:{name}", " cat"]
    stream = comfy_stream(["a photo of", "xx yy", "cat"], tok)
    stream = [[(torch.full((4,), float(len(name))) if word == 2 else t, w, word) for t, w, word in chunk]
              for chunk in stream]
    return locate_words("".join(pieces), stream, pieces, tok)


def test_two_different_embeddings_are_different_tokens_and_one_embedding_aligns_with_itself(tok):
    """Every embedding vector used to be token -1, so refine aligned 'embedding:alpha' with 'embedding:beta' (the
    edited row took the other embedding's maps, as if nothing had changed there)."""
    alpha, beta, again = with_embedding(tok, "alpha"), with_embedding(tok, "beta"), with_embedding(tok, "alpha")
    assert alpha.words[3].text == "embedding:alpha" and len(alpha.words[3].positions) == 2
    assert alpha.words[3].ids != beta.words[3].ids and alpha.words[3].ids == again.words[3].ids
    assert not any(bool(refine_mapping(alpha, beta).mapped[p]) for p in beta.words[3].positions)
    assert all(bool(refine_mapping(alpha, again).mapped[p]) for p in again.words[3].positions)
