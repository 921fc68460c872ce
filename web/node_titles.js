import { app } from "../../scripts/app.js";

// The pack's nodes show their whole title when added: the front end sizes a new node by its slots and widgets, so
// a node with few of them (Demo Model has three outputs and no widget) cut "Prompt-to-Prompt Demo Model" short.
// A loaded workflow's saved sizes still win (they are applied after this).
const PREFIX = "Prompt-to-Prompt";

function titleWidth(title) {
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = `${LiteGraph.NODE_TEXT_SIZE ?? 14}px ${LiteGraph.NODE_FONT ?? "Arial"}`;
  return Math.ceil(ctx.measureText(title).width + 2 * (LiteGraph.NODE_TITLE_HEIGHT ?? 30));
}

app.registerExtension({
  name: "prompt_to_prompt.node_titles",
  nodeCreated(node) {
    if (!String(node.title ?? "").startsWith(PREFIX)) return;
    const width = titleWidth(node.title);
    if (node.size[0] < width) node.setSize([width, node.size[1]]);
  },
});
