"""Bad and odd graph inputs to every node of the pack, through the real server's POST /prompt, as a tester (or a
script) would send them: non-finite numbers, empty and oversized prompts, missing embeddings, wrong wiring.

The server must stay up; every failure must be the pack's own message or ComfyUI's validation error, never a
bare KeyError, AttributeError, TypeError or IndexError; nothing that succeeds may output NaN; and a plain
graph run after all of them gives the very same picture as before them. Graphs sample tiny random-weight
models (the test node pack in server_nodes; see the tiny_server fixture) at 64 x 64 for 2 steps, so each case
takes well under a second.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import live_server

SOURCE, TARGET = "a cat riding a bicycle", "a dog riding a bicycle"
PHOTO_PROMPT = "a photo of a cat"
NAN, INF = float("nan"), float("inf")


class Graph:
    """An API-format prompt built node by node; `add` returns the node's outputs as links."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self._ids = itertools.count(1)

    def add(self, class_type: str, **inputs: Any) -> list[list]:
        node_id = str(next(self._ids))
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [[node_id, slot] for slot in range(8)]


def checkpoint(graph: Graph, family: str = "sd1") -> tuple[list, list, list]:
    model, clip, vae, *_ = graph.add("P2PTestTinyCheckpoint", family=family, seed=0)
    return model, clip, vae


def capture_sampled(graph: Graph, vae: list, model: list, clip: list, positive: list, latent: list,
                    advanced: bool = False) -> None:
    """Sample (KSampler, or KSamplerAdvanced replaying an inversion), then capture the latent and the image."""
    negative = graph.add("CLIPTextEncode", clip=clip, text="")[0]
    if advanced:
        samples = graph.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=2, cfg=7.5,
                            sampler_name="ddim", scheduler="ddim_uniform", positive=positive, negative=negative,
                            latent_image=latent, start_at_step=0, end_at_step=10000,
                            return_with_leftover_noise="disable")[0]
    else:
        samples = graph.add("KSampler", model=model, seed=0, steps=2, cfg=5.0, sampler_name="euler",
                            scheduler="normal", positive=positive, negative=negative, latent_image=latent,
                            denoise=1.0)[0]
    graph.add("P2PTestSaveLatent", samples=samples)
    graph.add("P2PTestSaveImage", images=graph.add("VAEDecode", samples=samples, vae=vae)[0])


SHARED = {"cross_replace_steps": 0.8, "self_replace_steps": 0.4, "width": 64, "height": 64}
EDIT_DEFAULTS = {
    "ReplaceEdit": {**SHARED, "source_prompt": SOURCE, "target_prompt": TARGET},
    "RefineEdit": {**SHARED, "source_prompt": "a house in the snow", "target_prompt": "a wooden house in the snow"},
    "Reweight": {**SHARED, "source_prompt": "a fluffy teddy bear", "words": "fluffy", "scale": 2.0,
                 "apply_to": "new row"},
}


def edit(graph: Graph, model: list, clip: list, node: str = "ReplaceEdit", **inputs: Any) -> list[list]:
    return graph.add(node, model=model, clip=clip, **{**EDIT_DEFAULTS[node], **inputs})


def edit_graph(node: str = "ReplaceEdit", family: str = "sd1", **inputs: Any) -> dict:
    graph = Graph()
    model, clip, vae = checkpoint(graph, family)
    edited, positive, latent, *_ = edit(graph, model, clip, node, **inputs)
    capture_sampled(graph, vae, edited, clip, positive, latent)
    return graph.nodes


def blend_graph(no_edit: bool = False, **inputs: Any) -> dict:
    graph = Graph()
    model, clip, vae = checkpoint(graph)
    edited, positive, latent, *_ = edit(graph, model, clip)
    blended, attention, *_ = graph.add("LocalBlendMask", model=model if no_edit else edited, clip=clip,
                                       **{"source_words": "cat", "edit_words": "dog", "threshold": 0.3, "start": 0.2,
                                          "level": "1/2", **inputs})
    capture_sampled(graph, vae, blended, clip, positive, latent)
    return graph.nodes


def store_graph(show: dict | None = None, **inputs: Any) -> dict:
    """AttentionStore alone, sampled, then ShowAttention of the decoded images with all four outputs captured."""
    graph = Graph()
    model, clip, vae = checkpoint(graph)
    stored, positive, latent, attention, *_ = graph.add(
        "AttentionStore", model=model, clip=clip,
        **{"prompt": SOURCE, "level": "1/2", "start": 0.0, "end": 1.0, "width": 64, "height": 64,
           "self_attention": False, **inputs})
    negative = graph.add("CLIPTextEncode", clip=clip, text="")[0]
    samples = graph.add("KSampler", model=stored, seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                        positive=positive, negative=negative, latent_image=latent, denoise=1.0)[0]
    images = graph.add("VAEDecode", samples=samples, vae=vae)[0]
    heatmaps, word_masks, blend_masks, components, *_ = graph.add(
        "ShowAttention", attention=attention, images=images,
        **{"row": 0, "words": "cat", "opacity": 0.6, "components": 4, **(show or {})})
    for image in (heatmaps, components):
        graph.add("P2PTestSaveImage", images=image)
    for mask in (word_masks, blend_masks):
        graph.add("P2PTestSaveMask", mask=mask)
    return graph.nodes


def invert_graph(edit_latent: str = "inverted", sampler_latent: str = "edit", with_edit: bool = True,
                 batch: int = 1, **inputs: Any) -> dict:
    """A photo (a flat colour, VAE-encoded) inverted, edited and replayed with KSamplerAdvanced.

    edit_latent: what the edit node's latent input gets: "inverted", "photo" or "none" (unconnected).
    sampler_latent: what the sampler gets: "edit" (the edit node's latent output) or "photo".
    """
    graph = Graph()
    model, clip, vae = checkpoint(graph)
    image = graph.add("EmptyImage", width=64, height=64, batch_size=batch, color=0x8844AA)[0]
    photo = graph.add("VAEEncode", pixels=image, vae=vae)[0]
    inverted_model, inverted, *_ = graph.add(
        "NullTextInvert", model=model, clip=clip, latent=photo,
        **{"prompt": PHOTO_PROMPT, "mode": "direct", "steps": 2, "cfg": 7.5, "scheduler": "ddim_uniform", **inputs})
    if not with_edit:
        positive = graph.add("CLIPTextEncode", clip=clip, text=PHOTO_PROMPT)[0]
        latent = photo if sampler_latent == "photo" else inverted
        capture_sampled(graph, vae, inverted_model, clip, positive, latent, advanced=True)
        return graph.nodes
    latent_input = {"inverted": {"latent": inverted}, "photo": {"latent": photo}, "none": {}}[edit_latent]
    edited, positive, latent, *_ = edit(graph, inverted_model, clip, source_prompt="",
                                        target_prompt="a photo of a dog", **latent_input)
    capture_sampled(graph, vae, edited, clip, positive, photo if sampler_latent == "photo" else latent,
                    advanced=True)
    return graph.nodes


@dataclass(frozen=True)
class Case:
    """A graph and what must come of it: 'ok', 'p2p' (the pack's message) or 'invalid' (ComfyUI's validation),
    with a pattern the message must contain."""

    name: str
    graph: dict
    outcome: str = "ok"
    message: str = ""


def p2p(name: str, graph: dict, message: str) -> Case:
    return Case(name, graph, "p2p", message)


def invalid(name: str, graph: dict, message: str) -> Case:
    return Case(name, graph, "invalid", message)


def non_finite(node: str, name: str) -> str:
    return f"The '{name}' input of Prompt-to-Prompt {node}.* is nan; set it to a finite number"


CASES = [
    # ReplaceEdit
    Case("replace defaults", edit_graph()),
    p2p("replace empty source", edit_graph(source_prompt=""), "source prompt is empty"),
    p2p("replace empty target", edit_graph(target_prompt="  "), "target prompt is empty"),
    p2p("replace word counts differ", edit_graph(target_prompt="a big dog riding a bicycle"), "use RefineEdit"),
    p2p("replace cross NaN", edit_graph(cross_replace_steps=NAN), non_finite("Replace", "cross_replace_steps")),
    p2p("replace self NaN", edit_graph(self_replace_steps=NAN), non_finite("Replace", "self_replace_steps")),
    invalid("replace self Infinity", edit_graph(self_replace_steps=INF), "bigger than max"),
    invalid("replace cross -Infinity", edit_graph(cross_replace_steps=-INF), "smaller than min"),
    p2p("replace word window NaN", edit_graph(word_windows="dog: nan"), "Cannot read the step window 'nan'"),
    p2p("replace word window reversed", edit_graph(word_windows="dog: 0.9-0.1"), "step window must satisfy"),
    p2p("replace word window gibberish", edit_graph(word_windows=":::"), "Cannot read the step window"),
    p2p("replace word window unknown word", edit_graph(word_windows="horse: 0.4"), "'horse' is not a word"),
    Case("replace non-ASCII words", edit_graph(source_prompt="a café 🐱 riding", target_prompt="a café 🐶 riding")),
    Case("replace weighted words", edit_graph(source_prompt="a (cat:1.3) riding", target_prompt="a (dog:1.3) riding")),
    p2p("replace NaN word weight", edit_graph(source_prompt="a (cat:nan) riding", target_prompt="a dog riding"),
        "weight nan; write a finite weight"),
    p2p("replace megabyte prompt", edit_graph(source_prompt="cat " * 250_000, target_prompt="dog " * 250_000),
        "chunks of 75 tokens long.*up to 16 chunks"),
    Case("replace three-chunk prompt", edit_graph(source_prompt="a cat " * 100, target_prompt="a dog " * 100)),
    Case("replace smallest size", edit_graph(width=16, height=16)),
    invalid("replace width zero", edit_graph(width=0), "smaller than min"),
    invalid("replace unknown layers choice", edit_graph(self_attention_layers="most"), "not in"),
    p2p("replace missing embedding", edit_graph(source_prompt="a embedding:nothere cat",
                                                target_prompt="a embedding:nothere dog"),
        "embedding 'nothere' .*not found.*ComfyUI/models/embeddings"),
    p2p("replace embedding without a name", edit_graph(source_prompt="a cat embedding:",
                                                       target_prompt="a dog embedding:"),
        "'embedding:' without an embedding name"),
    Case("replace existing embedding", edit_graph(source_prompt="embedding:tinystyle a cat riding",
                                                  target_prompt="embedding:tinystyle a dog riding")),
    Case("replace on SDXL", edit_graph(family="sdxl")),
    Case("replace on Flux", edit_graph(family="flux")),
    Case("replace on SD3", edit_graph(family="sd3")),
    p2p("replace on AuraFlow", edit_graph(family="aura"), "this model is AuraFlow"),
    # RefineEdit
    Case("refine defaults", edit_graph("RefineEdit")),
    Case("refine identical prompts", edit_graph("RefineEdit", target_prompt="a house in the snow")),
    Case("refine removes words", edit_graph("RefineEdit", target_prompt="house")),
    p2p("refine empty target", edit_graph("RefineEdit", target_prompt=""), "target prompt is empty"),
    p2p("refine cross NaN", edit_graph("RefineEdit", cross_replace_steps=NAN),
        non_finite("Refine", "cross_replace_steps")),
    Case("refine long prompts", edit_graph("RefineEdit", source_prompt="a house " * 200,
                                           target_prompt="a wooden house " * 150)),
    # Reweight
    p2p("reweight scale NaN", edit_graph("Reweight", scale=NAN), non_finite("Reweight", "scale")),
    invalid("reweight scale Infinity", edit_graph("Reweight", scale=INF), "bigger than max"),
    invalid("reweight scale -Infinity", edit_graph("Reweight", scale=-INF), "smaller than min"),
    Case("reweight scale zero", edit_graph("Reweight", scale=0.0)),
    Case("reweight scale -10", edit_graph("Reweight", scale=-10.0)),
    p2p("reweight no words", edit_graph("Reweight", words=""), "at least one word"),
    p2p("reweight only commas", edit_graph("Reweight", words=",,,"), "at least one word"),
    p2p("reweight unknown word", edit_graph("Reweight", words="unicorn"), "'unicorn' is not a word"),
    invalid("reweight unknown apply_to", edit_graph("Reweight", apply_to="sideways"), "not in"),
    Case("reweight last edit without an edit", edit_graph("Reweight", apply_to="last edit")),
    # LocalBlendMask
    Case("blend defaults", blend_graph()),
    p2p("blend threshold NaN", blend_graph(threshold=NAN), non_finite("Local Blend", "threshold")),
    p2p("blend start NaN", blend_graph(start=NAN), non_finite("Local Blend", "start")),
    invalid("blend threshold Infinity", blend_graph(threshold=INF), "bigger than max"),
    Case("blend threshold zero", blend_graph(threshold=0.0)),
    invalid("blend threshold one", blend_graph(threshold=1.0), "bigger than max"),
    invalid("blend start one", blend_graph(start=1.0), "bigger than max"),
    Case("blend threshold and start at their maximum", blend_graph(threshold=0.99, start=0.99)),
    p2p("blend too many entries", blend_graph(edit_words="dog; horse"), "2 entries separated by ';'"),
    p2p("blend unknown subtract word", blend_graph(subtract_words="zebra"), "'zebra' is in none of the prompts"),
    p2p("blend unknown source word", blend_graph(source_words="zebra"), "'zebra' is not a word"),
    p2p("blend without an edit", blend_graph(no_edit=True), "needs an edit to blend"),
    p2p("blend level the model lacks", blend_graph(level="1/8"), "no cross-attention at 1/8"),
    invalid("blend unknown level", blend_graph(level="3/4"), "not in"),
    # AttentionStore and ShowAttention
    Case("store and show defaults", store_graph()),
    Case("store and show self-attention", store_graph(self_attention=True)),
    p2p("store empty window", store_graph(start=0.5, end=0.5), "window is empty"),
    p2p("store reversed window", store_graph(start=0.7, end=0.2), "window is empty"),
    p2p("store start NaN", store_graph(start=NAN), non_finite("Attention Store", "start")),
    p2p("store end NaN", store_graph(end=NAN), non_finite("Attention Store", "end")),
    p2p("store empty prompt", store_graph(prompt=""), "'prompt' input of Attention Store is empty"),
    p2p("store window shorter than a step", store_graph(end=0.2),
        "Nothing was recorded at level 1/2 .*window 0-0.2, which holds no whole step"),
    p2p("show opacity NaN", store_graph(show={"opacity": NAN}), non_finite("Show Attention", "opacity")),
    p2p("show row past the batch", store_graph(show={"row": 5}), "Row 5 was not recorded"),
    p2p("show unknown word", store_graph(show={"words": "unicorn"}), "'unicorn' is not a word"),
    Case("show more components than pixels", store_graph(self_attention=True, show={"components": 64})),
    invalid("show negative row", store_graph(show={"row": -1}), "smaller than min"),
    # NullTextInvert and inverted photos
    Case("invert direct", invert_graph()),
    Case("invert null-text", invert_graph(mode="null-text")),
    Case("invert reconstruction", invert_graph(with_edit=False)),
    p2p("invert cfg NaN", invert_graph(cfg=NAN), non_finite("Invert Image", "cfg")),
    invalid("invert cfg Infinity", invert_graph(cfg=INF), "bigger than max"),
    p2p("invert empty prompt", invert_graph(prompt=""), "'prompt' input of Invert Image is empty"),
    p2p("invert missing embedding", invert_graph(prompt="embedding:nothere a cat"), "embedding 'nothere'"),
    p2p("invert two images", invert_graph(batch=2), "inverts one image"),
    invalid("invert unknown mode", invert_graph(mode="magic"), "not in"),
    p2p("inverted edit latent unconnected", invert_graph(edit_latent="none"), "latent input is not connected"),
    p2p("inverted edit latent is the photo", invert_graph(edit_latent="photo"),
        "not the one NullTextInvert inverted"),
    p2p("inverted sampler latent is the photo", invert_graph(sampler_latent="photo"),
        "not the one NullTextInvert inverted"),
    p2p("inverted reconstruction of the photo", invert_graph(with_edit=False, sampler_latent="photo"),
        "not the one NullTextInvert inverted"),
]

BARE = ("KeyError", "AttributeError", "TypeError", "IndexError")


@dataclass
class Result:
    outcome: str
    message: str
    exception_type: str = ""
    outputs: dict = field(default_factory=dict)


def submit(url: str, graph: dict) -> Result:
    """Queue a graph and wait for it; what came of it."""
    status, answer = live_server.post(url + "/prompt", {"prompt": graph, "client_id": "p2p-odd-inputs"})
    if status == 400:
        errors = [answer["error"]] + [e for node in answer["node_errors"].values() for e in node["errors"]]
        return Result("invalid", " | ".join(f"{e.get('type')}: {e.get('message')} {e.get('details', '')}"
                                            for e in errors))
    assert status == 200, (status, answer)
    entry = live_server.history(url, answer["prompt_id"])
    failure = next((data for event, data in entry["status"]["messages"] if event == "execution_error"), None)
    if failure is not None:
        return Result("p2p" if failure["exception_type"].endswith(".PromptToPromptError") else "other",
                      failure["exception_message"], failure["exception_type"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    return Result("ok", "", outputs=entry["outputs"])


def plain_graph() -> dict:
    graph = Graph()
    model, clip, vae = checkpoint(graph)
    positive = graph.add("CLIPTextEncode", clip=clip, text=SOURCE)[0]
    latent = graph.add("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    capture_sampled(graph, vae, model, clip, positive, latent)
    return graph.nodes


def digests(result: Result) -> list[str]:
    return [d for output in result.outputs.values() for d in output.get("digest", [])]


def test_there_are_at_least_40_cases_over_every_node():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    used = {node["class_type"] for case in CASES for node in case.graph.values()}
    assert {"ReplaceEdit", "RefineEdit", "Reweight", "LocalBlendMask", "AttentionStore", "ShowAttention",
            "NullTextInvert"} <= used


def test_odd_inputs_get_the_packs_message_or_a_validation_error_and_the_server_stays_up(tiny_server: str):
    server = tiny_server
    before = submit(server, plain_graph())
    assert before.outcome == "ok" and digests(before)
    problems = []
    for case in CASES:
        result = submit(server, case.graph)
        if any(result.exception_type.endswith(bare) for bare in BARE):
            problems.append(f"{case.name}: a bare {result.exception_type}: {result.message[:200]}")
        if not all(finite for output in result.outputs.values() for finite in output.get("finite", [])):
            problems.append(f"{case.name}: an output is not finite")
        if result.outcome != case.outcome or not re.search(case.message, result.message, re.S):
            problems.append(f"{case.name}: expected {case.outcome} /{case.message}/, got {result.outcome}: "
                            f"{result.exception_type} {result.message[:200]}")
    assert not problems, "\n".join(problems)
    assert live_server.get_json(server + "/system_stats", timeout=5)["system"]
    after = submit(server, plain_graph())
    assert digests(after) == digests(before), "a plain graph samples differently after the odd inputs"
