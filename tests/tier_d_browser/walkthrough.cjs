// Tier D driver: headless Chromium (driven by playwright-core) on a real ComfyUI page with its real frontend.
//
// Usage: node walkthrough.cjs SPEC.json   (written by test_browser.py; see there for the keys)
// It loads every workflow for a template thumbnail (and the API prompt the frontend makes of it), then
// walks a user through the parsing workflow: run it, read the PartID legends, click legend labels (which
// switch Select Labels toggles), run again.
// It prints one JSON object (what it saw) on stdout; the Python test makes the assertions.
"use strict";
const fs = require("fs");
const path = require("path");

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { chromium } = require(require.resolve("playwright-core", { paths: [spec.playwright_dir] }));

const seen = { console_errors: [], page_errors: [], requests_failed: [], extension_scripts: [], steps: [] };

async function settle(page) {
  // two animation frames: the canvas redraws, then the DOM widgets follow it
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForTimeout(300);
}

// Show these nodes: fitted when they fit at a readable zoom, else from their top (or bottom) edge.
async function focus(page, ids, align = "top", margin = 30) {
  await page.evaluate(({ ids, align, margin }) => {
    const app = window.comfyAPI.app.app;
    const nodes = ids.length ? ids.map((id) => app.graph.getNodeById(id)) : app.graph.nodes;
    const title = 30;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - margin;
    const y0 = Math.min(...nodes.map((n) => n.pos[1] - title)) - margin - 20;
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + margin;
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + margin;
    const canvas = app.canvas.canvas;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const fit = Math.min(w / (x1 - x0), h / (y1 - y0));
    const scale = ids.length ? Math.max(0.75, Math.min(1.1, fit)) : Math.min(1.1, fit);
    const dx = Math.max(0, (w / scale - (x1 - x0)) / 2);
    const dy = Math.max(0, (h / scale - (y1 - y0)) / 2);
    const top = align === "top" || h / scale >= y1 - y0;
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [-x0 + dx, top ? -y0 + dy : -(y1 - h / scale)];
    app.canvas.setDirty(true, true);
  }, { ids, align, margin });
  await settle(page);
}

// Columns by dependency level (LiteGraph's arrange), PartID nodes and previews first in each column,
// each node level with its first input's node when there is room: the parts a user looks at side by side.
async function tidy(page, first) {
  await page.evaluate((first) => {
    const g = window.comfyAPI.app.app.graph;
    g.arrange();
    const columns = new Map();
    for (const n of g.nodes) columns.set(n._level ?? 0, [...(columns.get(n._level ?? 0) ?? []), n]);
    const parentY = (n) => {
      const link = n.inputs?.[0]?.link != null ? (g.links.get?.(n.inputs[0].link) ?? g.links[n.inputs[0].link]) : null;
      return link ? g.getNodeById(link.origin_id).pos[1] : 0;
    };
    const rank = (n) => (first.includes(String(n.id)) ? 0 : 1);
    let x = 40;
    for (const level of [...columns.keys()].sort((a, b) => a - b)) {
      const column = columns.get(level).sort((a, b) => rank(a) - rank(b) || parentY(a) - parentY(b));
      let y = 60, width = 0;
      for (const n of column) {
        y = rank(n) ? y : Math.max(y, parentY(n));
        n.pos = [x, y];
        y += n.size[1] + 60;
        width = Math.max(width, n.size[0]);
      }
      x += width + 60;
    }
    g.setDirtyCanvas(true, true);
  }, first);
  await settle(page);
}

async function shot(page, name, type = "png") {
  const file = path.join(spec.out_dir, `${name}.${type}`);
  await page.locator("canvas#graph-canvas").screenshot({ path: file, type, ...(type === "jpeg" ? { quality: 85 } : {}) });
  seen.steps.push({ screenshot: file });
  return file;
}

async function load(page, workflow) {
  await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    if (wf.api) app.loadApiJson(wf.api, wf.name);
    else await app.loadGraphData(wf.graph, true, true, wf.name);
  }, workflow);
  await settle(page);
}

async function run(page) {
  return page.evaluate(() => new Promise((resolve) => {
    const { app } = window.comfyAPI.app;
    const { api } = window.comfyAPI.api;
    const done = (ok) => (e) => resolve({ ok, prompt_id: e.detail?.prompt_id, detail: ok ? null : e.detail });
    api.addEventListener("execution_success", done(true), { once: true });
    api.addEventListener("execution_error", done(false), { once: true });
    app.queuePrompt(0, 1);
  }));
}

function panelState(page) {
  return page.evaluate(() => [...document.querySelectorAll(".partid-panel")].map((p) => ({
    node: p.dataset.partidNode, type: p.dataset.partidType, visible: p.getBoundingClientRect().width > 0,
    height: p.getBoundingClientRect().height,
    labels: [...p.querySelectorAll("[data-partid-label]")].map((c) => ({
      id: c.dataset.partidLabel, on: c.classList.contains("partid-on"),
      colour: getComputedStyle(c.querySelector("i")).backgroundColor })),
    parts: [...p.querySelectorAll("[data-partid-part]")].map((c) => ({ name: c.dataset.partidPart, on: c.classList.contains("partid-on") })),
    text: p.textContent })));
}

function toggles(page, nodeId) {
  return page.evaluate((id) => Object.fromEntries(window.comfyAPI.app.app.graph.getNodeById(id).widgets
    .filter((w) => typeof w.value === "boolean").map((w) => [w.name, w.value])), nodeId);
}

async function openPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(spec.timeout_ms);
  page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push({ text: m.text(), url: m.location().url }); });
  page.on("pageerror", (e) => seen.page_errors.push(String(e.stack || e)));
  page.on("requestfailed", (r) => seen.requests_failed.push(r.url()));
  page.on("response", (r) => { if (r.url().includes("/extensions/")) seen.extension_scripts.push({ url: r.url(), status: r.status() }); });
  await page.goto(spec.url);
  await page.waitForFunction(() => window.comfyAPI?.app?.app?.graph && window.comfyAPI.app.app.canvas);
  await page.waitForFunction(() => window.comfyAPI.app.app.extensions.some((e) => e.name === "PartID.core"));
  await settle(page);
  return page;
}

async function main() {
  fs.mkdirSync(spec.out_dir, { recursive: true });
  const browser = await chromium.launch({ executablePath: spec.chromium, headless: true,
                                          args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  try {
    // Two fresh browser contexts (no stored workflows or node previews carry over): the walkthrough,
    // then the template thumbnails.
    const page = await openPage(browser);
    seen.registered = await page.evaluate(() => window.comfyAPI.app.app.extensions.filter((e) => e.name === "PartID.core").length);
    const wf = spec.walkthrough;
    await load(page, wf);
    await tidy(page, wf.first);
    await focus(page, wf.focus_loaded);
    await shot(page, "01_graph_loaded");
    seen.panels_before_run = await panelState(page);

    seen.first_run = await run(page);
    await settle(page);
    seen.panels_after_run = await panelState(page);
    await tidy(page, wf.first);   // the legends and previews made the PartID nodes taller
    await focus(page, wf.focus_parse);
    await shot(page, "02_legend_after_run");
    await focus(page, wf.focus_face);
    await shot(page, "02b_face_legend_after_run");

    // Click legend labels: on the Body Parts node (switches its Select Labels) and on the Face Regions node.
    const clicked = [];
    for (const [parseId, selectId] of wf.clicks) {
      await focus(page, [parseId, selectId]);
      const chips = await page.locator(`.partid-panel[data-partid-node="${parseId}"] [data-partid-label]`).all();
      const before = await toggles(page, selectId);
      // the largest label but the background: a mask that shows in the screenshot
      const shares = await Promise.all(chips.map(async (c) => [await c.getAttribute("data-partid-label"),
        parseFloat((await c.getAttribute("title")).match(/([\d.]+)% of the image/)?.[1] ?? "0")]));
      const best = shares.map((x, i) => [...x, i]).filter(([id]) => id !== "background").sort((a, b) => b[1] - a[1])[0];
      const chip = chips[best ? best[2] : 0];
      const id = await chip.getAttribute("data-partid-label");
      await chip.click();
      await settle(page);
      clicked.push({ parse: parseId, select: selectId, id, before: before[id], after: (await toggles(page, selectId))[id] });
    }
    // ... and on the Select Labels legend itself: switch the clicked body label off and on again.
    const [, bodySelect] = wf.clicks[0];
    await focus(page, [bodySelect], "bottom");
    const selChip = page.locator(`.partid-panel[data-partid-node="${bodySelect}"] [data-partid-label="${clicked[0].id}"]`);
    await selChip.click(); await settle(page);
    const offAgain = (await toggles(page, bodySelect))[clicked[0].id];
    await selChip.click(); await settle(page);
    seen.select_legend_click = { id: clicked[0].id, after_first: offAgain, after_second: (await toggles(page, bodySelect))[clicked[0].id] };
    seen.clicked = clicked;
    seen.panels_after_clicks = await panelState(page);
    await focus(page, wf.focus_toggled);
    await shot(page, "03_labels_toggled");

    seen.second_run = await run(page);
    await settle(page);
    await tidy(page, wf.first);
    seen.panels_after_second_run = await panelState(page);
    seen.preview_images = await page.evaluate((ids) => ids.map((id) => {
      const node = window.comfyAPI.app.app.graph.getNodeById(id);
      return { id, imgs: node.imgs?.length ?? 0, w: node.imgs?.[0]?.naturalWidth ?? 0 };
    }), wf.previews);
    await focus(page, wf.focus_result);
    await shot(page, "04_finished_run");

    const thumbs = await openPage(browser);
    seen.api_prompts = {};
    for (const t of spec.thumbnails) {                 // template browser thumbnails: the graph, fitted
      await load(thumbs, t);
      // what the frontend itself would queue ("Save (API)" runs the same graphToPrompt): checked against the API twin
      seen.api_prompts[t.name] = await thumbs.evaluate(async () => (await window.comfyAPI.app.app.graphToPrompt()).output);
      await focus(thumbs, []);
      await shot(thumbs, t.name, "jpeg");
    }
  } finally {
    await browser.close();
  }
}

main().then(() => { process.stdout.write(JSON.stringify(seen)); },
            (e) => { seen.fatal = String(e.stack || e); process.stdout.write(JSON.stringify(seen)); process.exit(1); });
