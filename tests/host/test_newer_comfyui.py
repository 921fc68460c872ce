"""What newer ComfyUI does differently, pinned on whichever host runs the suite: the pack's wrappers, tokenizer use
and command-line executor called the way the newest source calls them (ComfyUI 0.33 and upstream 0.38)."""

from __future__ import annotations

import inspect

import executor
import pack
import pytest
import tiny
import torch
from sampling import ksample, replace

tiny.import_comfy()
import comfy.patcher_extension  # noqa: E402
import comfy.samplers  # noqa: E402
import execution  # noqa: E402

OUTER_SAMPLE = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
HOST_PASSES_LATENT_SHAPES = "latent_shapes" in inspect.signature(comfy.samplers.CFGGuider.outer_sample).parameters


def edit_and_sample(p2p, model, clip, wrap=None) -> torch.Tensor:
    """A word swap sampled by KSampler; `wrap` may add wrappers to the edit node's MODEL (inside the pack's)."""
    model, positive, latent = replace(p2p, model, clip)
    return ksample(wrap(model.clone()) if wrap is not None else model, clip, positive, latent, steps=4)


def test_the_edit_passes_on_keyword_arguments_newer_samplers_give_its_wrappers(p2p, sd1):
    """Since late 2025 CFGGuider.sample calls OUTER_SAMPLE wrappers with `latent_shapes=`; a wrapper that does not
    take it stopped every edit at the first step (TypeError). Here a wrapper outside the pack's adds it where the
    host does not, and one inside checks it arrives (and takes it away again where the host's guider would refuse
    it; wrappers run in the order they were added): the edit samples the same picture with it as without."""
    model, clip = sd1
    seen = []

    def newer_caller(executor, noise, *args, **kwargs):
        kwargs.setdefault("latent_shapes", [noise.shape])
        return executor(noise, *args, **kwargs)

    def guider(executor, *args, **kwargs):
        seen.append(kwargs.get("latent_shapes"))
        if not HOST_PASSES_LATENT_SHAPES:
            kwargs.pop("latent_shapes")
        return executor(*args, **kwargs)

    def inside(model):
        model.add_wrapper_with_key(OUTER_SAMPLE, "test_newer_guider", guider)
        return model

    outer = model.clone()
    outer.add_wrapper_with_key(OUTER_SAMPLE, "test_newer_caller", newer_caller)
    edited = edit_and_sample(p2p, outer, clip, wrap=inside)
    assert len(seen) == 1 and seen[0] is not None and tuple(seen[0][0])[1:] == (4, 8, 8)
    torch.testing.assert_close(edited, edit_and_sample(p2p, model, clip), rtol=0, atol=0)


@pytest.mark.parametrize("returns", ["embedding, leftover (0.3.x)", "embedding, name, leftover (newer)"])
def test_embeddings_are_found_whichever_shape_the_tokenizer_answers_in(tmp_path, returns):
    """SDTokenizer._try_get_embedding answers (embedding, leftover) in ComfyUI 0.3.x and (embedding, name,
    leftover) since; a prompt with `embedding:` broke the edit nodes and the token route on newer hosts. The pack
    reads the host's tokenizer through a stand-in that answers in the other shape (ComfyUI's own tokenizing
    keeps the host's)."""
    import safetensors.torch

    safetensors.torch.save_file({"clip_l": torch.ones(2, tiny.CLIP_HIDDEN)}, str(tmp_path / "tinystyle.safetensors"))
    clip = tiny.make_clip("sd1")
    clip.tokenizer.clip_l.embedding_directory = [str(tmp_path)]

    class Answering:
        def __init__(self, tokenizer):
            self.tokenizer_of_the_host = tokenizer

        def __getattr__(self, name):
            return getattr(self.tokenizer_of_the_host, name)

        def _try_get_embedding(self, name):
            found = self.tokenizer_of_the_host._try_get_embedding(name)
            embedding, leftover = found[0], found[-1]
            return (embedding, leftover) if returns.startswith("embedding, leftover") else \
                (embedding, name.split()[0], leftover)

    text = pack.module("runtime.text")
    tokenizer = Answering(clip.tokenizer.clip_l)

    def locate(prompt):
        return text._locate(prompt, lambda: clip.tokenize(prompt, return_word_ids=True)["l"], tokenizer)

    tokens = locate("a photo of embedding:tinystyle cat riding")
    assert [w.text for w in tokens.words] == ["a", "photo", "of", "embedding:tinystyle", "cat", "riding"]
    with pytest.raises(pack.error_type(), match="'missing' of the prompt"):
        locate("a photo of embedding:missing cat")


def test_the_command_lines_executor_is_made_as_the_hosts_main_makes_it(p2p):
    """Newer executors read their RAM headroom from `cache_args` on every run (None there was a TypeError in
    execution.py); the command line's executor gives what the host's PromptExecutor takes, and runs a graph."""
    headless = pack.module("cli.headless")
    made = headless.new_executor(executor.ServerStub())
    takes = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" in takes:
        assert {"ram", "ram_inactive", "lru"} <= set(made.cache_args)
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "P2PTestSaveLatent", "inputs": {"samples": ["1", 0]}}}
    made.execute(prompt, "newer-executor", {}, ["2"])
    assert made.success, made.status_messages
