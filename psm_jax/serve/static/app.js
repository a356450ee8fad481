// The PSM inpainting page: pick an image, brush a hole, run the spread, step through its iterations.
// Plain JavaScript, no dependencies. The mask is kept at the image's own pixel size (one byte per pixel,
// 1 = hole) and sent as a black/white PNG (white = hole), so what is painted is exactly what the server gets.
"use strict";

const $ = (id) => document.getElementById(id);
const EDITOR_PX = 384;       // target on-screen size of the editor and the output
const PANEL_PX = 192;        // ... of one spread panel
const STRIP_PX = 64;         // ... of one cell of the all-iterations strip
const PAGE_SIZE = 24;        // example thumbnails per page

const state = {
  info: null, examples: 0, page: 0,
  image: null,               // {blob, width, height, label}
  mask: null,                // Uint8Array(width * height), 1 = hole
  undo: [], tool: "brush", drawing: false, last: null,
  result: null, sample: 0,
};
// Exposed for scripts and the browser test: the last request's blobs and fields, and the last response.
window.psm = { last: null, response: null, state };

// ---------------------------------------------------------------------------------------------- helpers

function scaleFor(w, h, target) {
  const side = Math.max(w, h);
  return side <= target ? Math.max(1, Math.floor(target / side)) : target / side;
}

function sizeElement(el, w, h, target) {
  const s = scaleFor(w, h, target);
  el.style.width = `${Math.round(w * s)}px`;
  el.style.height = `${Math.round(h * s)}px`;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

const pngURL = (b64) => `data:image/png;base64,${b64}`;

// ---------------------------------------------------------------------------------------------- model info

async function loadInfo() {
  const info = await getJSON("/api/info");
  state.info = info;
  const step = info.step === null ? "" : `, step ${info.step}`;
  $("model-info").textContent = `${info.name} (${info.kind}${step}): trained at ${info.resolution}px, `
    + `default T = ${info.default_iters}; data: ${info.data_source || "unknown"}`;
  const iters = $("iters");
  [iters.min, iters.max] = info.iters_range;
  iters.value = info.default_iters;
  iters.disabled = info.iters_range[0] === info.iters_range[1];
  $("iters-value").textContent = iters.value;
  $("samples").max = info.max_samples;
  const strategy = $("strategy");
  for (const s of info.strategies) strategy.add(new Option(s, s));
  state.examples = info.examples;
  renderExamples();
}

// ---------------------------------------------------------------------------------------------- examples

function renderExamples() {
  const box = $("examples");
  box.replaceChildren();
  const pages = Math.max(1, Math.ceil(state.examples / PAGE_SIZE));
  $("examples-note").textContent = state.examples
    ? `${state.examples} held-out images of the run's data`
    : "no held-out images available here: upload one";
  $("page-label").textContent = `${state.page + 1} / ${pages}`;
  const first = state.page * PAGE_SIZE;
  for (let i = first; i < Math.min(first + PAGE_SIZE, state.examples); i++) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.index = i;
    b.title = `held-out image ${i}`;
    b.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = `/api/examples/${i}`;
    img.alt = `example ${i}`;
    b.append(img);
    b.addEventListener("click", () => pickExample(i));
    box.append(b);
  }
}

async function pickExample(i) {
  const r = await fetch(`/api/examples/${i}`);
  if (!r.ok) { setStatus((await r.json()).error, true); return; }
  await setImage(await r.blob(), `held-out image ${i}`);
  for (const b of $("examples").children) b.setAttribute("aria-pressed", String(b.dataset.index === String(i)));
}

// ---------------------------------------------------------------------------------------------- the editor

async function setImage(blob, label) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  } catch (e) {
    setStatus("cannot read that file as an image", true);
    return;
  }
  const { width: w, height: h } = bitmap;
  if (state.info && w * h > state.info.max_pixels) {
    setStatus(`${w}x${h} is more than this server's ${state.info.max_pixels} pixels`, true);
    return;
  }
  state.image = { blob, width: w, height: h, label };
  state.mask = new Uint8Array(w * h);
  state.undo = [];
  for (const c of [$("image-canvas"), $("mask-canvas")]) {
    c.width = w;
    c.height = h;
    sizeElement(c, w, h, EDITOR_PX);
  }
  $("image-canvas").getContext("2d").drawImage(bitmap, 0, 0);
  redrawMask();
  const maxBrush = Math.max(4, Math.ceil(Math.max(w, h) / 4));
  $("brush-size").max = maxBrush;
  $("image-label").textContent = `${label}: ${w}x${h}`;
  $("run").disabled = false;
  setStatus("brush the hole, then Run");
}

function redrawMask(x0 = 0, y0 = 0, x1 = null, y1 = null) {
  const { width: w, height: h } = state.image;
  x1 = x1 === null ? w : x1;
  y1 = y1 === null ? h : y1;
  if (x1 <= x0 || y1 <= y0) return;
  const ctx = $("mask-canvas").getContext("2d");
  const data = ctx.createImageData(x1 - x0, y1 - y0);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      if (state.mask[y * w + x]) {
        const o = ((y - y0) * (x1 - x0) + (x - x0)) * 4;
        data.data[o] = 229; data.data[o + 1] = 57; data.data[o + 2] = 53; data.data[o + 3] = 255;
      }
    }
  }
  ctx.putImageData(data, x0, y0);
}

function stamp(cx, cy) {
  // A disc of whole pixels (no anti-aliasing: a pixel is hole or not).
  const { width: w, height: h } = state.image;
  const r = Number($("brush-size").value) / 2;
  const value = state.tool === "brush" ? 1 : 0;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(w, Math.ceil(cx + r) + 1);
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(h, Math.ceil(cy + r) + 1);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (dx * dx + dy * dy <= Math.max(r * r, 0.25)) state.mask[y * w + x] = value;
    }
  }
  redrawMask(x0, y0, x1, y1);
}

function pointerPos(ev) {
  const c = $("mask-canvas");
  const rect = c.getBoundingClientRect();
  return [(ev.clientX - rect.left) * c.width / rect.width, (ev.clientY - rect.top) * c.height / rect.height];
}

function strokeTo(p) {
  const [x, y] = p;
  const [lx, ly] = state.last || p;
  const step = Math.max(0.5, Number($("brush-size").value) / 4);
  const n = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / step));
  for (let i = 1; i <= n; i++) stamp(lx + (x - lx) * i / n, ly + (y - ly) * i / n);
  state.last = p;
}

function setupEditor() {
  const c = $("mask-canvas");
  c.addEventListener("pointerdown", (ev) => {
    if (!state.image) return;
    c.setPointerCapture(ev.pointerId);
    state.undo.push(state.mask.slice());
    if (state.undo.length > 50) state.undo.shift();
    state.drawing = true;
    state.last = null;
    strokeTo(pointerPos(ev));
  });
  c.addEventListener("pointermove", (ev) => { if (state.drawing) strokeTo(pointerPos(ev)); });
  const end = () => { state.drawing = false; state.last = null; };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });
  for (const tool of ["brush", "eraser"]) {
    $(`tool-${tool}`).addEventListener("click", () => {
      state.tool = tool;
      $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
      $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
    });
  }
  $("undo").addEventListener("click", () => {
    if (!state.image || !state.undo.length) return;
    state.mask.set(state.undo.pop());
    redrawMask();
  });
  $("clear").addEventListener("click", () => {
    if (!state.image) return;
    state.undo.push(state.mask.slice());
    state.mask.fill(0);
    redrawMask();
  });
  $("upload").addEventListener("change", () => {
    const f = $("upload").files[0];
    if (f) setImage(f, "uploaded image");
    for (const b of $("examples").children) b.setAttribute("aria-pressed", "false");
  });
  $("prev-page").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderExamples(); });
  $("next-page").addEventListener("click", () => {
    state.page = Math.min(Math.max(0, Math.ceil(state.examples / PAGE_SIZE) - 1), state.page + 1);
    renderExamples();
  });
  $("iters").addEventListener("input", () => { $("iters-value").textContent = $("iters").value; });
}

function maskBlob() {
  // White (255) = hole, black = known, opaque: the API's mask convention.
  const { width: w, height: h } = state.image;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const ctx = c.getContext("2d");
  const data = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = state.mask[i] ? 255 : 0;
    data.data[4 * i] = v; data.data[4 * i + 1] = v; data.data[4 * i + 2] = v; data.data[4 * i + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

// ---------------------------------------------------------------------------------------------- run

async function run() {
  if (!state.image) return;
  if (!state.mask.some((v) => v)) { setStatus("brush a hole first", true); return; }
  const fields = { iters: $("iters").value, seed: $("seed").value || "0", samples: $("samples").value || "1",
                   strategy: $("strategy").value, trajectory: "1" };
  const mask = await maskBlob();
  const form = new FormData();
  form.append("image", state.image.blob, "image");
  form.append("mask", mask, "mask.png");
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  window.psm.last = { image: state.image.blob, mask, fields };
  $("run").disabled = true;
  setStatus(`running T = ${fields.iters} on ${state.image.width}x${state.image.height}…`);
  const t0 = performance.now();
  try {
    const r = await fetch("/api/inpaint", { method: "POST", body: form });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    window.psm.response = body;
    showResult(body);
    setStatus(`done in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  } catch (e) {
    setStatus(String(e.message || e), true);
  } finally {
    $("run").disabled = false;
  }
}

function showResult(body) {
  state.result = body;
  state.sample = 0;
  $("result").hidden = false;
  const sel = $("sample");
  sel.replaceChildren(...body.outputs.map((_, i) => new Option(`sample ${i + 1}`, i)));
  sel.hidden = body.outputs.length < 2;
  const steps = $("step");
  steps.max = body.iters;
  steps.value = 1;
  showSample();
}

function showSample() {
  const body = state.result;
  const s = state.sample;
  const out = $("output");
  out.src = pngURL(body.outputs[s]);
  sizeElement(out, body.width, body.height, EDITOR_PX);
  const dl = $("download");
  dl.href = pngURL(body.outputs[s]);
  dl.download = `psm_inpaint_seed${body.seed}${body.outputs.length > 1 ? `_s${s + 1}` : ""}.png`;
  const traj = body.trajectory;
  $("panels").hidden = !traj;
  $("strip").hidden = !traj;
  $("panels-note").textContent = !traj ? "this model returns no trajectory (export it --with_trajectory)"
    : `panels at the work size ${traj.work_size[1]}x${traj.work_size[0]} (strategy ${body.strategy}); `
      + `sigma on one scale, 0 to ${traj.sigma_max.toPrecision(3)}`;
  if (traj) {
    $("colorbar").src = pngURL(traj.colorbar);
    for (const fig of $("panels").querySelectorAll("figure[data-field]")) {
      fig.hidden = !traj.fields.includes(fig.dataset.field);
    }
    renderStrip();
  }
  showStep();
}

function renderStrip() {
  const body = state.result;
  const traj = body.trajectory;
  const panels = traj.samples[state.sample];
  const strip = $("strip");
  strip.replaceChildren();
  strip.style.gridTemplateColumns = `auto repeat(${body.iters}, ${STRIP_PX}px)`;
  strip.append(document.createElement("span"));
  for (let t = 1; t <= body.iters; t++) {
    const head = document.createElement("span");
    head.textContent = `t = ${t}`;
    strip.append(head);
  }
  for (const field of traj.fields) {
    const name = document.createElement("span");
    name.textContent = { mask: "m", mean: "\u03bc", sigma: "\u03c3" }[field];
    strip.append(name);
    panels[field].forEach((b64, t) => {
      const img = document.createElement("img");
      img.src = pngURL(b64);
      img.alt = `${field} ${t + 1}`;
      img.dataset.step = t + 1;
      img.addEventListener("click", () => { $("step").value = t + 1; showStep(); });
      strip.append(img);
    });
  }
}

function showStep() {
  const body = state.result;
  const t = Number($("step").value);
  $("step-value").textContent = `${t} / ${body.iters}`;
  const traj = body.trajectory;
  if (!traj) return;
  const [h, w] = traj.work_size;
  const panels = traj.samples[state.sample];
  for (const field of traj.fields) {
    const img = $(`panel-${field}`);
    img.src = pngURL(panels[field][t - 1]);
    img.dataset.step = t;
    sizeElement(img, w, h, PANEL_PX);
  }
  for (const img of $("strip").querySelectorAll("img")) img.classList.toggle("current", Number(img.dataset.step) === t);
}

// ---------------------------------------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", async () => {
  setupEditor();
  $("run").addEventListener("click", run);
  $("step").addEventListener("input", showStep);
  $("sample").addEventListener("change", () => { state.sample = Number($("sample").value); showSample(); });
  try {
    await loadInfo();
    document.body.dataset.ready = "1";
  } catch (e) {
    setStatus(`cannot reach the server: ${e.message || e}`, true);
  }
});
