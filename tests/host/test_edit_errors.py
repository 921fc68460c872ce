"""Bad input fails early with a message that names the problem and the fix."""

from __future__ import annotations

import executor
import pytest
import tiny
import torch
from sampling import replace

tiny.import_comfy()
import nodes  # noqa: E402


def ksample(model, clip, positive, latent, sampler="euler"):
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    return nodes.common_ksampler(model, 1, 3, 5.0, sampler, "normal", positive, negative, latent)


def test_word_window_for_a_word_not_in_the_prompt(p2p, sd1, error):
    with pytest.raises(error, match="'horse' is not a word of the prompt 'a dog riding a bicycle'"):
        replace(p2p, *sd1, word_windows="horse: 0.4")


def test_reweight_word_not_in_the_prompt(p2p, sd1, error):
    with pytest.raises(error, match="'fluffy' is not a word"):
        p2p["Reweight"]().apply(*sd1, "a teddy bear", "fluffy", 2.0, "new row", 0.8, 0.4, 64, 64)


def test_swap_with_different_word_counts_points_to_refine(p2p, sd1, error):
    with pytest.raises(error, match="RefineEdit"):
        replace(p2p, *sd1, target="a big dog riding a bicycle")


@pytest.mark.parametrize("field, fix", [("source", "the prompt the edit should start from"),
                                        ("target", "the prompt of the edited picture")])
def test_empty_prompt(p2p, sd1, error, field, fix):
    with pytest.raises(error, match=f"{field} prompt is empty; write {fix}"):
        replace(p2p, *sd1, **{field: "   "})


WRONG_CLIP = "The CLIP encodes prompts 64 values wide, but this model attends to text 32 wide: connect the CLIP"


def test_a_clip_of_another_checkpoint_is_refused_naming_the_clip(p2p, sd1, error):
    """It used to pass the node and fail deep inside sampling: mat1 and mat2 shapes cannot be multiplied."""
    with pytest.raises(error, match=WRONG_CLIP):
        replace(p2p, sd1[0], tiny.make_clip("sdxl"))


def test_a_chained_edit_with_a_clip_of_another_checkpoint_is_refused(p2p, sd1, error):
    model, _, _ = replace(p2p, *sd1)
    with pytest.raises(error, match=WRONG_CLIP):
        replace(p2p, model, tiny.make_clip("sdxl"), target="a horse riding a bicycle")


def test_latent_input_with_several_images(p2p, sd1, error):
    latent = {"samples": torch.randn(2, 4, 8, 8)}
    with pytest.raises(error, match="batch size 1"):
        replace(p2p, *sd1, latent=latent)


@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (1, 4, 2, 8, 8)], ids=["another family's", "video"])
def test_a_latent_the_model_cannot_sample_is_refused_at_the_node(p2p, sd1, error, shape):
    """A 16-channel latent used to fail in the UNet's first convolution, a video latent in a repeat."""
    with pytest.raises(error, match=r"latent has shape .* image latents of 4 channels.*Empty Latent Image"):
        replace(p2p, *sd1, latent={"samples": torch.zeros(shape)})


def test_sampling_a_latent_batch_that_does_not_match_the_rows(p2p, sd1, error):
    model, positive, _ = replace(p2p, *sd1)
    latent = nodes.EmptyLatentImage().generate(64, 64, 3)[0]
    with pytest.raises(error, match="latent batch has 3 rows but this edit has 2"):
        ksample(model, sd1[1], positive, latent)


def test_rows_with_different_noise(p2p, sd1, error):
    model, positive, _ = replace(p2p, *sd1)
    latent = nodes.EmptyLatentImage().generate(64, 64, 2)[0]
    with pytest.raises(error, match="different noise.*LATENT output"):
        ksample(model, sd1[1], positive, latent)


def test_unsupported_model_family(p2p, error):
    model, clip, _ = executor.tiny_bundle("aura")
    with pytest.raises(error, match="edits SD1.x, SD2.x, SDXL, Flux.1.*SD3.*this model is AuraFlow.*docs/models.md"):
        replace(p2p, model, clip)


def test_chained_edit_with_another_source_prompt(p2p, sd1, error):
    model, _, _ = replace(p2p, *sd1)
    with pytest.raises(error, match="differs from the source prompt of the edits before it"):
        replace(p2p, model, sd1[1], source="a bird on a branch", target="a cat on a branch")


def test_bad_word_window_syntax(p2p, sd1, error):
    with pytest.raises(error, match="word: 0.4"):
        replace(p2p, *sd1, word_windows="dog 0.4")


# --- prompts ComfyUI would sample otherwise than the graph says ----------------------------------------

@pytest.fixture
def clip_with_embeddings(tmp_path):
    """A tiny CLIP that looks up embeddings in an empty folder, as a checkpoint loader's CLIP does."""
    clip = tiny.make_clip("sd1")
    clip.tokenizer.clip_l.embedding_directory = [str(tmp_path)]
    return clip


def test_a_missing_embedding_is_named_with_where_embeddings_go(p2p, sd1, error, clip_with_embeddings, tmp_path):
    """It used to be blamed on an unsupported tokenizer."""
    with pytest.raises(error, match=f"embedding 'nothere' .* not found in {tmp_path}.*ComfyUI/models/embeddings"):
        replace(p2p, sd1[0], clip_with_embeddings, source="a embedding:nothere cat", target="a embedding:nothere dog")


def test_an_embedding_marker_without_a_name(p2p, sd1, error, clip_with_embeddings):
    with pytest.raises(error, match="'embedding:' without an embedding name"):
        replace(p2p, sd1[0], clip_with_embeddings, source="a cat embedding:", target="a dog embedding:")


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_a_non_finite_word_weight(p2p, sd1, error, weight):
    with pytest.raises(error, match=f"weight {weight}; write a finite weight"):
        replace(p2p, *sd1, target=f"a (dog:{weight}) riding a bicycle")


def test_a_prompt_longer_than_an_edit_takes(p2p, sd1, error):
    """2000 words: the swap mapper used to ask for a dense matrix of the square of the length."""
    with pytest.raises(error, match="is 27 chunks of 75 tokens long.*up to 16 chunks"):
        replace(p2p, *sd1, source="cat " * 2000, target="dog " * 2000)


def test_the_inversion_refuses_an_empty_prompt_before_inverting(p2p, sd1, error):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(error, match="The 'prompt' input of Invert Image is empty; describe the photo"):
        p2p["NullTextInvert"]().invert(*sd1, " ", latent, "direct", 2, 7.5, "ddim_uniform")
