"""The token preview's route, POST /prompt_to_prompt/tokens, on the real server: anything that is not the
documented payload gets a 4xx with a message within a second, and the server keeps answering meanwhile.

The route shares ComfyUI's event loop with the queue and the UI. It used to answer a JSON list, string, number or
null, or a mistyped field, with a 500, and a 1 MB prompt held the loop for 14.5 s (the swap mapper asked for
290 GB) while the whole server, GET /system_stats included, waited.
"""

from __future__ import annotations

import json
import threading
import time

import live_server
import pack
import pytest

ROUTE = "/prompt_to_prompt/tokens"
LIMIT_S = 1.0

MALFORMED = {
    "a list": [1, 2],
    "a string": "a cat",
    "a number": 5,
    "null": None,
    "targets a number": {"kind": "replace", "source": "a cat", "targets": 5},
    "targets nested": {"kind": "refine", "source": "a cat", "targets": [["a dog"]]},
    "source a number": {"kind": "replace", "source": 5, "targets": ["a dog"]},
    "source NaN": b'{"kind": "replace", "source": NaN}',
    "words an object": {"kind": "reweight", "source": "a cat", "words": {"cat": 2}},
    "unknown kind": {"kind": "teleport", "source": "a cat"},
    "unknown encoder": {"kind": "replace", "source": "a cat", "encoder": "t9"},
    "not JSON": b"{'kind': 'replace'",
    "not UTF-8": b'{"source": "\xff\xfe"}',
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "nested object 30000 deep": b'{"source": ' + b'{"a": ' * 30_000 + b"1" + b"}" * 30_001,
}
OVERSIZED = {
    "a 1 MB prompt": {"kind": "replace", "source": "cat " * 250_000, "targets": ["dog " * 250_000]},
    "a 5000-word refine": {"kind": "refine", "source": "a house " * 2500, "targets": ["a wooden house " * 1700]},
    "65 targets": {"kind": "blend", "source": "a cat", "targets": ["a dog"] * 65},
    "65 subtract words": {"kind": "blend", "source": "a cat", "targets": ["a dog"] * 64,
                          "subtract_words": ", ".join(["cat"] * 65)},
    "many small fields": {"kind": "blend", "source": "a cat", "targets": ["a dog"] * 60, "edit_words": "x" * 300_000},
}


def timed_post(url: str, body) -> tuple[int, object, float]:
    started = time.perf_counter()
    status, answer = live_server.post(url + ROUTE, body, timeout=60)
    return status, answer, time.perf_counter() - started


class StatsPoller(threading.Thread):
    """GET /system_stats every 50 ms until `finish`, keeping how long each answer took."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.latencies, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            live_server.get_json(self.url + "/system_stats", timeout=60)
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.05)

    def finish(self) -> list[float]:
        self.stop.set()
        self.join(timeout=60)
        return self.latencies


@pytest.fixture
def poller(tiny_server: str):
    poller = StatsPoller(tiny_server)
    poller.start()
    yield poller
    poller.finish()


REFUSED = [(name, body, 400) for name, body in MALFORMED.items()] + \
          [(name, body, 413) for name, body in OVERSIZED.items()]


@pytest.mark.parametrize("name,body,status", REFUSED, ids=[name for name, _, _ in REFUSED])
def test_a_refused_payload_gets_its_4xx_within_a_second_while_the_server_answers_others(
        tiny_server: str, poller: StatsPoller, name: str, body, status: int):
    """400 for what is not the documented payload, 413 for more than a prompt can usefully hold."""
    answered, answer, seconds = timed_post(tiny_server, body)
    assert answered == status and answer["error"], (answered, answer)
    assert seconds < LIMIT_S
    latencies = poller.finish()
    assert latencies and max(latencies) < LIMIT_S


def test_the_longest_prompts_the_preview_takes_do_not_hold_the_server(tiny_server: str, poller: StatsPoller):
    """A blend chain of 20 edited rows of 1100 tokens each (just under 16 chunks), aligned and marked: the work
    runs off the event loop, so /system_stats answers meanwhile."""
    long = "a cat riding a bicycle " * 220
    body = {"kind": "blend", "source": long, "targets": [long.replace("cat", "dog")] * 20, "source_words": "cat",
            "edit_words": "dog"}
    status, answer, seconds = timed_post(tiny_server, body)
    latencies = poller.finish()
    assert status == 200 and answer["error"] is None and len(answer["rows"]) == 21, answer.get("error")
    assert len(latencies) >= 2 and max(latencies) < LIMIT_S
    print(f"20 rows of 1100 tokens: {seconds:.2f} s; /system_stats meanwhile: {len(latencies)} answers, "
          f"slowest {max(latencies) * 1000:.0f} ms")


def test_the_answer_shows_non_ascii_tokens_as_their_characters(tiny_server: str):
    status, answer = live_server.post(tiny_server + ROUTE, {"kind": "replace", "source": "a café",
                                                            "targets": ["a naïve"]})
    assert status == 200
    assert [[t["text"] for t in row["tokens"]] for row in answer["rows"]] == [["a", "café"], ["a", "na", "ï", "ve"]]


def test_flux_prompts_show_t5_tokens_where_the_edit_finds_them(tiny_server: str):
    """encoder 't5' (the front end sends it where the model or CLIP comes from a Flux loader): T5's pieces,
    'a' being two of them, and the swapped word 'cat,' (with its comma, as on CLIP) found at T5's positions."""
    status, answer = live_server.post(tiny_server + ROUTE, {"kind": "replace", "source": "a cat, sitting",
                                                            "targets": ["a dog, sitting"], "encoder": "t5"})
    assert status == 200 and answer["error"] is None
    assert [t["text"] for t in answer["rows"][0]["tokens"]] == ["\u2581", "a", "cat", ",", "sitting"]
    assert [t["status"] for t in answer["rows"][1]["tokens"]] == ["kept", "kept", "swapped", "swapped", "kept"]


def test_sd3_prompts_show_a_line_per_stream_of_its_context(tiny_server: str):
    """encoder 'sd3' (the front end sends it where the model or CLIP comes from an SD3 loader): SD3 reads CLIP's
    chunks then T5's tokens, and the edit acts on a word in both, so each prompt shows both streams."""
    status, answer = live_server.post(tiny_server + ROUTE, {"kind": "replace", "source": "a cat, sitting",
                                                            "targets": ["a dog, sitting"], "encoder": "sd3"})
    assert status == 200 and answer["error"] is None
    assert [row["label"] for row in answer["rows"]] == ["source CLIP", "source T5", "edit 1 CLIP", "edit 1 T5"]
    assert [t["text"] for t in answer["rows"][1]["tokens"]] == ["\u2581", "a", "cat", ",", "sitting"]
    assert [t["status"] for t in answer["rows"][2]["tokens"]] == ["kept", "swapped", "swapped", "kept"]
    assert [t["status"] for t in answer["rows"][3]["tokens"]] == ["kept", "kept", "swapped", "swapped", "kept"]
    status, answer = live_server.post(tiny_server + ROUTE, {"kind": "reweight", "source": "a cat, sitting",
                                                            "words": "cat", "encoder": "sd3"})
    marked = [[t["text"] for t in row["tokens"] if "reweighted" in t["marks"]] for row in answer["rows"]]
    assert marked == [["cat"], ["cat"]]  # no edit row yet: the source is the row reweighted


def test_a_prompt_the_edit_would_refuse_is_shown_as_its_error(tiny_server: str):
    """Too long for an edit but within the route's size: the preview shows the node's own message."""
    status, answer = live_server.post(tiny_server + ROUTE, {"kind": "replace", "source": "cat " * 1300,
                                                            "targets": ["dog"]})
    assert status == 200 and answer["rows"] == [] and "up to 16 chunks" in answer["error"]


def test_requests_sent_as_the_front_end_sends_them_still_work(tiny_server: str):
    body = json.dumps({"kind": "reweight", "source": "a fluffy bear", "targets": ["a fluffy bear"],
                       "words": "fluffy", "extra": "ignored"}).encode()
    status, answer = live_server.post(tiny_server + ROUTE, body)
    assert status == 200 and answer["error"] is None
    assert [t["marks"] for t in answer["rows"][1]["tokens"]] == [[], ["reweighted"], []]


def test_two_copies_of_the_pack_still_start_the_server_and_serve_the_route(tmp_path):
    """An old folder beside a Manager install: both copies load, and the route is registered once (aiohttp
    refuses to start a server with one route twice)."""
    base = live_server.base_directory(tmp_path)
    (base / "custom_nodes" / "comfyui-prompt-to-prompt-old").symlink_to(pack.REPO_ROOT, target_is_directory=True)
    with live_server.running(base) as url:
        status, answer = live_server.post(url + ROUTE, {"kind": "replace", "source": "a cat", "targets": ["a dog"]})
    assert status == 200 and [row["label"] for row in answer["rows"]] == ["source", "edit 1"]


@pytest.mark.parametrize("words", [{"subtract_words": "bicycle"}, {"edit_words": "dog; horse"}],
                         ids=["a subtract word in no prompt", "two edit-word entries for one edited row"])
def test_the_preview_warns_of_exactly_what_local_blend_refuses(p2p, sd1, error, words):
    """The preview said 'ready' for a subtract word that the run then refused: both now read the words with
    LocalBlendMask's own code, so the preview shows the node's message."""
    model, clip = sd1
    source, target = "a cat on a mat", "a dog on a mat"
    inputs = {"source_words": "cat", "edit_words": "dog", "subtract_words": "", **words}
    edited = p2p["ReplaceEdit"]().apply(model, clip, source, target, 0.8, 0.4, 64, 64)[0]
    with pytest.raises(error) as refused:
        p2p["LocalBlendMask"]().apply(edited, clip, inputs["source_words"], inputs["edit_words"], 0.3, 0.2, "1/2",
                                      subtract_words=inputs["subtract_words"])
    body = json.dumps({"kind": "blend", "source": source, "targets": [target], **inputs}).encode()
    answer = pack.module("routes.token_preview").answer_body(body)
    assert str(refused.value) in answer["warnings"]
