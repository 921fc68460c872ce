// Token preview for the Prompt-to-Prompt nodes: how the prompts tokenize and which tokens each edit touches.
// The tokenization and the edit maths come from the pack's route on the ComfyUI server (the same code the
// sampler runs), never from a re-implementation here.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const KINDS = { ReplaceEdit: "replace", RefineEdit: "refine", Reweight: "reweight", LocalBlendMask: "blend" };
// Nodes an edit chain may start from: they set the source prompt but show no preview themselves.
const SOURCES = { NullTextInvert: "prompt", FlowInvert: "prompt", AttentionStore: "prompt" };
const ROUTE = "/prompt_to_prompt/tokens";
const POLL_MS = 400;

const STATUS_STYLE = {
  kept: "background:#3a3f47;color:#dde",
  swapped: "background:#b5651d;color:#fff",
  inserted: "background:#2e7d32;color:#fff",
  removed: "background:#5a2a2a;color:#caa;text-decoration:line-through",
};
const MARK_STYLE = {
  reweighted: "outline:2px solid #b388ff",
  blended: "box-shadow:inset 0 -3px 0 #4fc3f7",
  window: "outline:1px dashed #ffd54f",
  subtracted: "text-decoration:line-through;opacity:0.7",
};
const LEGEND = [["swapped", []], ["inserted", []], ["removed", []], ["kept", ["reweighted"]], ["kept", ["blended"]],
                ["kept", ["window"]]];

function widgetValue(node, name) {
  const widget = node.widgets?.find((w) => w.name === name);
  return widget ? widget.value : undefined;
}

function linkOf(graph, id) {
  return graph.links instanceof Map ? graph.links.get(id) : graph.links?.[id];
}

// The Prompt-to-Prompt nodes feeding this node's model input, first one first.
function upstream(node) {
  const chain = [];
  let current = node;
  for (let guard = 0; guard < 64; guard++) {
    const input = current.inputs?.find((i) => i.name === "model");
    if (!input || input.link == null) break;
    const link = linkOf(current.graph ?? app.graph, input.link);
    const origin = link && (current.graph ?? app.graph).getNodeById(link.origin_id);
    if (!origin || !(origin.comfyClass in KINDS || origin.comfyClass in SOURCES)) break;
    chain.unshift(origin);
    current = origin;
  }
  return chain;
}

// The text encoder whose tokens the sampler will see: Flux reads T5's, SD3 CLIP's chunks then T5's tokens. Told by
// the loaders the node's model and clip come from (a DualCLIPLoader of type flux or sd3, a TripleCLIPLoader, a
// checkpoint or diffusion model named flux or sd3...), through any nodes between; CLIP (SD1.x, SD2.x, SDXL)
// otherwise.
function encoder(node) {
  const seen = new Set();
  const queue = [node];
  while (queue.length && seen.size < 256) {
    const current = queue.shift();
    if (seen.has(current.id)) continue;
    seen.add(current.id);
    const values = (current.widgets ?? []).map((w) => String(w.value ?? ""));
    if (current !== node && values.some((v) => /flux/i.test(v) && !/flux\.?2/i.test(v))) return "t5";
    if (current !== node && (current.comfyClass === "TripleCLIPLoader" || values.some((v) => /sd3/i.test(v)))) {
      return "sd3";
    }
    for (const input of current.inputs ?? []) {
      if (input.link == null || !["MODEL", "CLIP"].includes(input.type)) continue;
      const link = linkOf(current.graph ?? app.graph, input.link);
      const origin = link && (current.graph ?? app.graph).getNodeById(link.origin_id);
      if (origin) queue.push(origin);
    }
  }
  return "clip";
}

// The prompt rows an edit chain makes: its source, then one target per row-adding node.
function chainRows(chain) {
  let source = "";
  const targets = [];
  for (const n of chain) {
    source = source || widgetValue(n, SOURCES[n.comfyClass] ?? "source_prompt") || "";
    const kind = KINDS[n.comfyClass];
    if (kind === "replace" || kind === "refine") targets.push(widgetValue(n, "target_prompt") ?? "");
    if (kind === "reweight" && (widgetValue(n, "apply_to") === "new row" || targets.length === 0)) targets.push(source);
  }
  return { source, targets };
}

function request(node) {
  return { ...fields(node), encoder: encoder(node) };
}

function fields(node) {
  const kind = KINDS[node.comfyClass];
  const before = chainRows(upstream(node));
  const source = widgetValue(node, "source_prompt") || before.source;
  if (kind === "replace" || kind === "refine") {
    return { kind, source, targets: [widgetValue(node, "target_prompt") ?? ""],
             word_windows: widgetValue(node, "word_windows") ?? "" };
  }
  if (kind === "reweight") {
    const last = widgetValue(node, "apply_to") === "last edit" && before.targets.length;
    return { kind, source, targets: [last ? before.targets[before.targets.length - 1] : source],
             words: widgetValue(node, "words") ?? "" };
  }
  return { kind, source: before.source, targets: before.targets,
           source_words: widgetValue(node, "source_words") ?? "", edit_words: widgetValue(node, "edit_words") ?? "",
           subtract_words: widgetValue(node, "subtract_words") ?? "" };
}

function chip(token) {
  const span = document.createElement("span");
  span.className = `p2p-token p2p-${token.status}`;
  span.dataset.marks = token.marks.join(" ");
  span.textContent = token.text;
  span.title = `${token.word}: ${token.status}${token.marks.length ? ", " + token.marks.join(", ") : ""}`;
  const styles = [STATUS_STYLE[token.status] ?? STATUS_STYLE.kept, ...token.marks.map((m) => MARK_STYLE[m] ?? "")];
  span.style.cssText = `display:inline-block;margin:1px ${token.first ? "1px 1px 4px" : "1px 1px 0"};` +
    `padding:0 3px;border-radius:3px;font:11px monospace;${styles.join(";")}`;
  return span;
}

function render(el, answer) {
  el.replaceChildren();
  // Errors and warnings first: at the node's default size they must show without scrolling.
  for (const [text, colour, cls] of [...(answer.error ? [[answer.error, "#ef5350", "p2p-error"]] : []),
                                      ...answer.warnings.map((w) => [w, "#ffb74d", "p2p-warning"])]) {
    const line = document.createElement("div");
    line.className = cls;
    line.textContent = `⚠ ${text}`;
    line.style.cssText = `font:11px sans-serif;color:${colour};white-space:normal`;
    el.append(line);
  }
  for (const row of answer.rows) {
    const line = document.createElement("div");
    line.className = "p2p-row";
    const label = document.createElement("span");
    label.textContent = `${row.label}: `;
    label.style.cssText = "font:11px sans-serif;color:#999;margin-right:2px";
    line.append(label, ...row.tokens.map(chip));
    el.append(line);
  }
  const legend = document.createElement("div");
  legend.className = "p2p-legend";
  legend.style.cssText = "margin-top:2px;opacity:0.75;transform:scale(0.85);transform-origin:left";
  legend.append(...LEGEND.map(([status, marks]) => {
    const sample = chip({ text: marks[0] ?? status, word: "legend", status, marks, first: true });
    sample.className = "p2p-legend-chip";  // not a token of the prompt
    return sample;
  }));
  el.append(legend);
  el.dataset.p2pPreview = answer.error ? "error" : answer.warnings.length ? "warning" : "ready";
}

function attach(node) {
  const el = document.createElement("div");
  el.className = "p2p-token-preview";
  el.style.cssText = "overflow-y:auto;padding:2px 4px;background:#1e1f22;border-radius:4px;line-height:1.6";
  const widget = node.addDOMWidget("token_preview", "p2p_token_preview", el, { hideOnZoom: false });
  widget.serialize = false;
  widget.computeLayoutSize = () => ({ minHeight: 100, minWidth: 200 });
  let last = "";
  let busy = false;
  const update = async () => {
    if (busy || !node.graph) return;
    const body = JSON.stringify(request(node));
    if (body === last) return;
    busy = true;
    try {
      const response = await api.fetchApi(ROUTE, { method: "POST", body, headers: { "Content-Type": "application/json" } });
      const answer = await response.json();
      // A refused request (a prompt too long to preview, say) answers 4xx with only its error.
      render(el, response.ok ? answer : { rows: [], warnings: [], error: answer.error ?? `HTTP ${response.status}` });
      last = body;
    } catch (error) {
      el.textContent = `token preview unavailable: ${error}`;
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(update, POLL_MS);
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    clearInterval(timer);
    return onRemoved?.apply(this, arguments);
  };
  update();
}

app.registerExtension({
  name: "prompt_to_prompt.token_preview",
  nodeCreated(node) {
    if (node.comfyClass in KINDS) attach(node);
  },
});
