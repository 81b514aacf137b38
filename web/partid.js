// PartID canvas extension: what a user needs to see and choose on PartID's nodes.
//
// - PartID Face Regions / Body Parts: after a run, a legend of the labels the parser found (the
//   colours of the node's preview IMAGE, which the node sends like core PreviewImage) and the region /
//   part each label feeds. Clicking a label switches it in the PartID Select Labels node(s) fed by
//   this node's label_map.
// - PartID Select Labels: the same coloured legend (from its own last run, else from the parsing node
//   upstream); clicking a label switches its boolean widget.
// - PartID ConsistentID Apply / Visual Persona Apply: which parts were active in the last run.
//
// Everything shown comes from the nodes' UI outputs (nodes/canvas_ui.py): names and colours are never
// duplicated here. The panel is a DOM widget that is not serialised, so workflows and prompts stay as
// they are without the extension.
import { app } from "../../scripts/app.js";

const PARSE_NODES = new Set(["PartIDFaceRegions", "PartIDBodyParts"]);
const SELECT_NODE = "PartIDSelectLabels";
const APPLY_NODES = new Set(["PartIDConsistentIDApply", "PartIDVisualPersonaApply"]);
const PANEL = "partid_panel";
const CHIP_WIDTH = 104;   // px: one legend cell; the panel height is computed from it
const ROW = 20;
const LINE = 16;
const MIN_WIDTH = 330;    // px: three legend cells a row
const PREVIEW_ROOM = 260;
const MARGIN = 6;         // px around the panel (DOM widgets default to 10) // px below the widgets for the preview image a node sends

const STYLE = `
.partid-panel { box-sizing: border-box; font: 11px/1.3 sans-serif; color: var(--input-text, #ddd);
  overflow: hidden; padding: 2px 0; }
.partid-panel .partid-hint { opacity: .7; height: ${LINE}px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.partid-panel .partid-groups { height: ${LINE}px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.partid-panel .partid-groups b { font-weight: 600; }
.partid-panel .partid-groups .partid-missing { opacity: .5; text-decoration: line-through; }
.partid-panel .partid-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(${CHIP_WIDTH - 4}px, 1fr));
  grid-auto-rows: ${ROW}px; gap: 0 4px; }
.partid-chip { display: flex; align-items: center; gap: 4px; padding: 0 4px; border-radius: 4px;
  border: 1px solid transparent; white-space: nowrap; overflow: hidden; cursor: default; user-select: none; }
.partid-chip.partid-clickable { cursor: pointer; }
.partid-chip.partid-clickable:hover { border-color: var(--border-color, #666); }
.partid-chip.partid-on { background: #2563eb66; border-color: #60a5fa; }
.partid-chip.partid-off { opacity: .45; }
.partid-chip i { flex: none; width: 12px; height: 12px; border-radius: 2px; border: 1px solid #0008; }
.partid-chip span { overflow: hidden; text-overflow: ellipsis; }
`;

function addStyle() {
  if (document.getElementById("partid-style")) return;
  const style = document.createElement("style");
  style.id = "partid-style";
  style.textContent = STYLE;
  document.head.append(style);
}

// --- graph helpers -----------------------------------------------------------------------------
function linkById(graph, id) {
  return graph.links?.get?.(id) ?? graph.links?.[id];
}

function allNodes() {
  return app.graph?.nodes ?? app.graph?._nodes ?? [];
}

/** PartID Select Labels nodes fed by this node's label_map output. */
function selectNodesFedBy(node) {
  const slot = node.outputs?.find((o) => o.name === "label_map");
  const found = [];
  for (const id of slot?.links ?? []) {
    const target = app.graph.getNodeById(linkById(app.graph, id)?.target_id);
    if (target?.comfyClass === SELECT_NODE) found.push(target);
  }
  return found;
}

/** The node feeding a Select Labels node's label_map input, if any. */
function parserFeeding(node) {
  const input = node.inputs?.find((i) => i.name === "label_map");
  const link = input?.link != null ? linkById(app.graph, input.link) : null;
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

function toggleWidget(node, id) {
  return node.widgets?.find((w) => w.name === id && typeof w.value === "boolean");
}

function setToggle(node, id, value) {
  const widget = toggleWidget(node, id);
  if (!widget || widget.value === value) return;
  widget.value = value;
  widget.callback?.(value, app.canvas, node);
}

// --- rendering ---------------------------------------------------------------------------------
function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

function chip(label, colour, title) {
  const c = el("div", "partid-chip");
  const swatch = el("i");
  if (colour) swatch.style.background = colour;
  else swatch.style.display = "none";
  c.append(swatch, el("span", null, label));
  c.title = title;
  return c;
}

function percent(share) {
  return share >= 0.001 ? `${(share * 100).toFixed(1)}%` : "<0.1%";
}

function groupsLine(groups) {
  const line = el("div", "partid-groups");
  for (const g of groups) {
    const part = el("span", g.found ? "" : "partid-missing");
    const b = el("b", null, g.name);
    part.append(b, document.createTextNode(g.found ? ` ${g.found}/${g.of}  ` : "  "));
    part.title = g.found ? `${g.name}: ${g.labels.join(", ") || "-"} (found in ${g.found} of ${g.of} image(s))`
      : `${g.name}: not found`;
    line.append(part);
  }
  return line;
}

/** Legend cells; `isOn(id)` marks switched-on labels; `onClick(entry)` makes them clickable. */
function legendGrid(entries, isOn, onClick, hintForClick) {
  const grid = el("div", "partid-grid");
  for (const e of entries) {
    const where = e.group ? ` - ${e.group}` : "";
    const c = chip(e.label, e.color, `${e.label}${where}, ${percent(e.share)} of the image. ${hintForClick}`);
    c.dataset.partidLabel = e.id;
    if (isOn(e.id)) c.classList.add("partid-on");
    if (onClick) {
      c.classList.add("partid-clickable");
      c.addEventListener("pointerdown", (ev) => ev.stopPropagation());
      c.addEventListener("click", (ev) => { ev.stopPropagation(); onClick(e); });
    }
    grid.append(c);
  }
  return grid;
}

function rowsFor(count, node) {
  const perRow = Math.max(1, Math.floor((node.size[0] - 20) / CHIP_WIDTH));
  return Math.ceil(count / perRow);
}

function renderParse(node, panel) {
  const ui = node.partidUi;
  if (!ui?.partid_legend) {
    panel.append(el("div", "partid-hint", "Run to see the labels found, in the preview's colours."));
    return LINE;
  }
  const selects = selectNodesFedBy(node);
  const isOn = (id) => selects.some((s) => toggleWidget(s, id)?.value === true);
  const onClick = selects.length ? (e) => {
    const value = !isOn(e.id);
    for (const s of selects) setToggle(s, e.id, value);
    refreshAll();
  } : null;
  const hint = selects.length ? "Click: switch it in Select Labels." : "";
  panel.append(groupsLine(ui.partid_groups ?? []));
  panel.append(legendGrid(ui.partid_legend, isOn, onClick, hint));
  if (!selects.length) panel.append(el("div", "partid-hint", "Connect label_map to PartID Select Labels to pick labels here."));
  return LINE * (selects.length ? 1 : 2) + ROW * rowsFor(ui.partid_legend.length, node);
}

function renderSelect(node, panel) {
  const legend = node.partidUi?.partid_legend ?? parserFeeding(node)?.partidUi?.partid_legend;
  if (!legend) {
    panel.append(el("div", "partid-hint", "Run the parser to see its labels here."));
    return LINE;
  }
  const isOn = (id) => toggleWidget(node, id)?.value === true;
  const onClick = (e) => { setToggle(node, e.id, !isOn(e.id)); refreshAll(); };
  panel.append(legendGrid(legend, isOn, onClick, "Click: switch it."));
  return ROW * rowsFor(legend.length, node);
}

function renderApply(node, panel) {
  const rows = node.partidUi?.partid_active;
  if (!rows) {
    panel.append(el("div", "partid-hint", "Run to see which parts are active."));
    return LINE;
  }
  const grid = el("div", "partid-grid");
  for (const r of rows) {
    const c = chip(`${r.name} ${r.name === "references" ? r.detail : ""}`.trim(), null,
                   `${r.name}: ${r.on ? "active" : "off"} (${r.detail})`);
    c.dataset.partidPart = r.name;
    c.classList.add(r.on ? "partid-on" : "partid-off");
    grid.append(c);
  }
  panel.append(grid);
  return ROW * rowsFor(rows.length, node);
}

function render(node) {
  const widget = node.widgets?.find((w) => w.name === PANEL);
  if (!widget) return;
  const panel = widget.element;
  panel.replaceChildren();
  panel.dataset.partidNode = String(node.id);
  panel.dataset.partidType = node.comfyClass;
  const draw = PARSE_NODES.has(node.comfyClass) ? renderParse
    : node.comfyClass === SELECT_NODE ? renderSelect : renderApply;
  if (node.size[0] < MIN_WIDTH) node.setSize([MIN_WIDTH, node.size[1]]);
  widget.partidHeight = draw(node, panel) + 6;
  const min = node.computeSize();
  const extra = node.partidUi?.images?.length ? PREVIEW_ROOM : 0;
  node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1] + extra)]);
  node.setDirtyCanvas?.(true, true);
}

function refreshAll() {
  for (const node of allNodes()) {
    if (node.widgets?.some((w) => w.name === PANEL)) render(node);
  }
}

function addPanel(node) {
  addStyle();
  const panel = el("div", "partid-panel");
  const height = () => (widget.partidHeight ?? LINE + 6) + 2 * MARGIN;   // the DOM widget's margins count
  const widget = node.addDOMWidget(PANEL, "partid_panel", panel, {
    serialize: false,
    hideOnZoom: false,
    margin: MARGIN,
    getMinHeight: height,
    getMaxHeight: height,
  });
  widget.serialize = false;
  render(node);
}

function chain(proto, name, after) {
  const before = proto[name];
  proto[name] = function (...args) {
    const result = before?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

// ComfyUI serves this folder twice when the pack's folder name differs from its pyproject name
// (WEB_DIRECTORY and [tool.comfy] web both register it): register once.
if (!app.extensions?.some((e) => e.name === "PartID.core")) app.registerExtension({
  name: "PartID.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData.name;
    if (!PARSE_NODES.has(name) && !APPLY_NODES.has(name) && name !== SELECT_NODE) return;
    chain(nodeType.prototype, "onNodeCreated", function () { addPanel(this); });
    chain(nodeType.prototype, "onExecuted", function (message) {
      this.partidUi = message;
      refreshAll();   // a parser's legend also feeds the Select Labels nodes below it
    });
    chain(nodeType.prototype, "onConnectionsChange", function () { if (this.graph) refreshAll(); });
    if (name === SELECT_NODE) {
      chain(nodeType.prototype, "onWidgetChanged", function (widgetName) {
        if (widgetName !== PANEL) refreshAll();
      });
    }
  },
});
