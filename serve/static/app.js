// The hw4 playground: plain JavaScript over the Serve app's own HTTP API (no libraries, no CDN).
"use strict";

const CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
const COLORS = ["#1f5fbf", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93"];
const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const $ = (id) => document.getElementById(id);
const png = (b64) => "data:image/png;base64," + b64;
let info = null;

// --- talking to the API --------------------------------------------------------------------------

function token() { return sessionStorage.getItem("hw4-token") || ""; }

// A readable sentence from FastAPI's error bodies: {"detail": "..."} or a list of field errors.
function describe(status, body) {
  const d = body && body.detail;
  if (Array.isArray(d)) {
    return d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${e.msg}`)
            .join("; ");
  }
  if (typeof d === "string") return d;
  return `the server answered HTTP ${status}`;
}

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (token()) headers.Authorization = "Bearer " + token();
  let res;
  try {
    res = await fetch(BASE + path, body === undefined ? {headers}
                      : {method: "POST", headers, body: JSON.stringify(body)});
  } catch (err) {
    throw new Error("could not reach the server (" + err.message + ")");
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(describe(res.status, data));
    err.status = res.status;
    if (res.status === 401) { $("token-needed").hidden = false; $("token").focus(); }
    throw err;
  }
  return data;
}

function showError(id, err) {
  const el = $(id);
  el.textContent = err ? "Error: " + err.message : "";
  el.hidden = !err;
}

// Run ``work`` with ``button`` disabled; errors land in the panel's alert box.
async function run(button, errorId, work) {
  if (button) button.disabled = true;
  showError(errorId, null);
  try { return await work(); } catch (err) { showError(errorId, err); } finally {
    if (button) button.disabled = false;
  }
}

function intIn(id, lo, hi, name) {
  const text = $(id).value.trim(), v = Number(text);
  if (text === "" || !Number.isInteger(v) || v < lo || v > hi) {
    throw new Error(`${name} must be a whole number from ${lo} to ${hi}`);
  }
  return v;
}

// Show a 28-px-per-image PNG ``scale`` times larger (crisp: style.css renders pixelated).
function enlarge(img, scale) {
  img.addEventListener("load", () => { img.style.width = img.naturalWidth * scale + "px"; });
}

function figure(src, caption, alt, scale = 3) {
  const f = document.createElement("figure");
  const img = new Image();
  enlarge(img, scale);
  img.src = src;
  img.alt = alt || caption;
  const c = document.createElement("figcaption");
  c.textContent = caption;
  f.append(img, c);
  return f;
}

// --- a small SVG line chart -----------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

// An SVG element with attributes and, optionally, text (set as text: names come from storage).
function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function chart(series, xlabel, ylabel) {
  const W = 320, H = 180, L = 44, B = 30, T = 8, R = 8;
  const pts = Object.values(series).flat();
  const wrap = document.createElement("div");
  if (!pts.length) { wrap.textContent = "no data"; return wrap; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => L + (W - L - R) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const sy = (y) => H - B - (H - B - T) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const fmt = (v) => Math.abs(v) >= 100 ? v.toFixed(0) : Number(v.toPrecision(3)).toString();
  const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                            "aria-label": `${ylabel} against ${xlabel}`});
  svg.append(
    svgEl("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}),
    svgEl("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}),
    svgEl("text", {x: L, y: H - B + 12}, fmt(x0)),
    svgEl("text", {x: W - R, y: H - B + 12, "text-anchor": "end"}, fmt(x1)),
    svgEl("text", {x: L - 3, y: T + 8, "text-anchor": "end"}, fmt(y1)),
    svgEl("text", {x: L - 3, y: H - B, "text-anchor": "end"}, fmt(y0)),
    svgEl("text", {x: (L + W) / 2, y: H - 4, "text-anchor": "middle"}, xlabel),
    svgEl("text", {x: 10, y: (H - B) / 2, transform: `rotate(-90 10 ${(H - B) / 2})`,
                   "text-anchor": "middle"}, ylabel));
  Object.values(series).forEach((p, i) => {
    const d = p.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", {fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2,
                                  points: d}));
  });
  wrap.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  Object.keys(series).forEach((name, i) => {
    const s = document.createElement("span");
    s.style.setProperty("--c", COLORS[i % COLORS.length]);
    s.textContent = name;
    legend.append(s);
  });
  wrap.append(legend);
  return wrap;
}

// A table row of cells given as text; the first ``heads`` cells are header cells.
function row(cells, heads = 1) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => tr.append(Object.assign(document.createElement(i < heads ? "th" : "td"),
                                                  {textContent: c})));
  return tr;
}

// --- sampler --------------------------------------------------------------------------------------

// the served DDPM's number of diffusion steps T (DDPM sampling always takes all of them)
function servedT() { return (info && info.ddpm.config && info.ddpm.config.timesteps) || 1000; }

// what a person reads for an attacked model's name (the server's /info says)
function modelName(name) { return (info && info.attack_targets && info.attack_targets[name]) || name; }

function servedConditional() { return Boolean(info && info.ddpm && info.ddpm.conditional); }

async function sample(params, verdicts) {
  const t0 = performance.now();
  const r = await api("ddpm/sample", {...params, format: "json"});
  let label = params.sampler === "ddpm" ? `DDPM-${servedT()}` : `DDIM-${params.steps}, η=${params.eta}`;
  if (params.labels !== undefined) label += `, w=${params.guidance}`;
  if (verdicts) showVerdicts(r);
  return figure(png(r.grid_png_base64),
                `${label}, seed ${params.seed}: ${r.seconds.toFixed(2)} s on the server, ` +
                `${((performance.now() - t0) / 1000).toFixed(2)} s here`, `${r.shape[0]} samples, ${label}`);
}

// Each sample with what the pinned MNIST classifier sees in it; red when it is not the digit asked for.
function showVerdicts(r) {
  const cells = r.images_png_base64.map((b64, i) => {
    const cls = r.verdict.class[i], conf = r.verdict.confidence[i];
    const asked = r.labels ? r.labels[i] : null;
    const f = figure(png(b64), `${cls} (${(100 * conf).toFixed(0)}%)`,
                     `sample ${i + 1}: classified as ${cls}` + (asked === null ? "" : `, asked for ${asked}`), 2);
    if (asked !== null && asked !== cls) f.classList.add("miss");
    return f;
  });
  const hits = r.labels ? r.labels.filter((c, i) => c === r.verdict.class[i]).length : null;
  const head = document.createElement("p");
  head.textContent = "The pinned MNIST classifier's verdict on each sample" +
    (hits === null ? "." : `: ${hits} of ${r.labels.length} are the digit asked for.`);
  $("s-verdicts").replaceChildren(head, ...cells);
}

function samplerParams() {
  const p = {sampler: $("s-sampler").value, steps: intIn("s-steps", 1, 1000, "Steps"),
             eta: Number($("s-eta").value), seed: intIn("s-seed", 0, 2 ** 31 - 1, "Seed"),
             n: intIn("s-n", 1, 64, "Images")};
  const digit = $("s-digit").value;
  if (digit === "any" || !servedConditional()) return p;
  p.guidance = Number($("s-guidance").value);
  if (digit === "rows") {  // n rounded down to whole rows of the ten digits
    const per = Math.max(1, Math.floor(Math.min(p.n, 60) / 10));
    p.n = 10 * per;
    p.nrow = per;
    p.labels = Array.from({length: p.n}, (_, i) => Math.floor(i / per));
  } else {
    p.labels = Number(digit);
  }
  return p;
}

$("s-eta").addEventListener("input", () => { $("s-eta-out").value = $("s-eta").value; });
$("s-guidance").addEventListener("input", () => { $("s-guidance-out").value = $("s-guidance").value; });
$("sample-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("s-go"), "sampler-error", async () => {
    $("s-out").replaceChildren(await sample(samplerParams(), true));
  });
});
$("s-compare").addEventListener("click", () => run($("s-compare"), "sampler-error", async () => {
  const p = samplerParams();
  const T = servedT();
  $("s-verdicts").replaceChildren();
  $("s-out").replaceChildren(await sample({...p, sampler: "ddpm", steps: T, eta: 1}),
                             await sample({...p, sampler: "ddim", steps: Math.min(50, T), eta: 0}));
}));

// --- latent explorer ------------------------------------------------------------------------------

let latentImage = {test_index: 0};  // what the explorer shows: a test index or an upload
let decodeSeq = 0, decodeTimer = null;

async function reconstruct(image) {
  const r = await api("vae/reconstruct", {image, format: "json"});
  latentImage = image;
  $("l-recon").src = png(r.grid_png_base64);
  const box = $("l-sliders");
  box.replaceChildren();
  r.mu.forEach((m, i) => {
    const label = document.createElement("label");
    const out = document.createElement("output");
    const input = Object.assign(document.createElement("input"), {
      type: "range", min: -4, max: 4, step: 0.05, value: m.toFixed(2), id: "z" + i});
    input.setAttribute("aria-label", "latent dimension " + i);
    out.value = m.toFixed(2);
    input.addEventListener("input", () => { out.value = Number(input.value).toFixed(2); scheduleDecode(); });
    label.htmlFor = input.id;
    label.append(`z${i} `, out, input);
    box.append(label);
  });
  await decode();
}

function scheduleDecode() {
  clearTimeout(decodeTimer);
  decodeTimer = setTimeout(() => run(null, "latent-error", decode), 120);
}

async function decode() {
  const seq = ++decodeSeq;  // a slow answer to an older slider position is dropped
  const z = [...$("l-sliders").querySelectorAll("input")].map((el) => Number(el.value));
  const r = await api("vae/decode", {z, format: "json"});
  const c = await api("vae/classify", {images: [{png_base64: r.images_png_base64[0]}]});
  if (seq !== decodeSeq) return;
  $("l-decoded").src = png(r.grid_png_base64);
  $("l-preds").replaceChildren(row(["model", "prediction", "confidence"], 3), ...Object.entries(c.models).map(([name, m]) =>
    row([modelName(name), CLASSES[m.prediction[0]], `${(100 * m.confidence[0]).toFixed(1)}%`])));
}

$("latent-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("l-load"), "latent-error", () => reconstruct({test_index: intIn("l-index", 0, 9999, "Test image")}));
});
$("l-file").addEventListener("change", () => {
  const file = $("l-file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => run($("l-load"), "latent-error",
                           () => reconstruct({png_base64: String(reader.result).split(",")[1]}));
  reader.readAsDataURL(file);
});
$("traverse-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("l-traverse"), "latent-error", async () => {
    const dims = $("l-dims").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (!dims.length || dims.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new Error("dimensions: whole numbers from 0, separated by commas");
    }
    const r = await api("vae/traverse", {image: latentImage, dims, format: "json"});
    Object.assign($("l-traversal"), {src: png(r.grid_png_base64), hidden: false});
  });
});

// --- adversarial demo -----------------------------------------------------------------------------

const byEps = (obj, eps) => obj[Object.keys(obj).find((k) => Math.abs(Number(k) - eps) < 1e-9)];

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the server sent an unreadable image"));
    img.src = src;
  });
}

// (adversarial - original) * gain + 1/2 as a grey image: the perturbation made visible.
async function perturbation(originalSrc, adversarialSrc, gain) {
  const [a, b] = await Promise.all([loadImage(originalSrc), loadImage(adversarialSrc)]);
  const canvas = Object.assign(document.createElement("canvas"), {width: a.width, height: a.height});
  const ctx = canvas.getContext("2d");
  ctx.drawImage(a, 0, 0);
  const pa = ctx.getImageData(0, 0, a.width, a.height);
  ctx.drawImage(b, 0, 0);
  const pb = ctx.getImageData(0, 0, a.width, a.height);
  for (let i = 0; i < pa.data.length; i += 4) {
    const v = 128 + gain * (pb.data[i] - pa.data[i]);
    pb.data[i] = pb.data[i + 1] = pb.data[i + 2] = Math.max(0, Math.min(255, v));
  }
  ctx.putImageData(pb, 0, 0);
  canvas.style.width = "84px";
  return canvas;
}

async function attack() {
  const eps = Number($("a-eps").value);
  const index = intIn("a-index", 0, 9999, "Test image");
  const body = {attack: $("a-attack").value, epsilons: eps > 0 ? [0, eps] : [0],
                images: [{test_index: index}], examples: 1,
                pgd_steps: intIn("a-steps", 1, 50, "PGD steps")};
  const r = await api("adversarial", body);
  const label = r.labels[0];
  const orig = png(r.originals_png_base64);
  const cards = [figure(orig, `original: ${CLASSES[label]}`, `test image ${index}`)];
  const gain = eps > 0 ? Math.min(20, 0.5 / eps) : 1;
  for (const name of Object.keys(r.predictions)) {
    const clean = byEps(r.predictions[name], 0), adv = byEps(r.predictions[name], eps);
    const advSrc = png(byEps(r.examples[name], eps));
    const card = document.createElement("div");
    const said = (p) => `${CLASSES[p.class[0]]} ${(100 * p.confidence[0]).toFixed(0)}%`;
    // fooled only if the attack changed a right answer; a wrong clean answer is said as such
    const verdict = clean.class[0] !== label ? ["wrong", "(wrong before the attack too)"]
      : adv.class[0] === label ? ["ok", "(still right)"] : ["wrong", "(fooled)"];
    card.append(Object.assign(document.createElement("h4"), {textContent: modelName(name)}));
    const pf = document.createElement("figure");
    pf.append(await perturbation(orig, advSrc, gain), Object.assign(
      document.createElement("figcaption"), {textContent: `perturbation ×${gain.toFixed(1)}`}));
    card.append(figure(advSrc, `adversarial (ε=${eps})`), pf);
    const p = document.createElement("p");
    p.append(`clean: ${said(clean)}`, document.createElement("br"), "attacked: ",
             Object.assign(document.createElement("span"), {className: verdict[0],
                           textContent: `${said(adv)} ${verdict[1]}`}));
    card.append(p);
    cards.push(card);
  }
  const grid = document.createElement("div");
  grid.className = "attack-grid";
  grid.append(...cards);
  $("a-out").replaceChildren(grid);
}

function drawCurves() {
  const ev = info && info.vae && info.vae.evaluation;
  const box = $("a-curves");
  if (!ev) {
    box.textContent = "No evaluation report for the served VAE yet: run jobs/evaluate.py to draw these.";
    return;
  }
  const a = $("a-attack").value, series = {};
  for (const [name, curves] of Object.entries(ev.robustness)) {
    const c = curves[a] && curves[a].untargeted;
    if (c) series[modelName(name)] = Object.entries(c).map(([e, v]) => [Number(e), v.accuracy]);
  }
  box.replaceChildren(chart(series, "ε", `accuracy under ${a.toUpperCase()}`));
  const note = document.createElement("p");
  note.className = "status";
  note.textContent = `from the evaluation run "${ev.report}" of ${ev.report_date}`;
  box.append(note);
}

$("a-eps").addEventListener("input", () => { $("a-eps-out").value = $("a-eps").value; });
$("a-attack").addEventListener("change", drawCurves);
$("attack-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("a-go"), "attack-error", attack);
});

// --- model info -----------------------------------------------------------------------------------

const SKIP = new Set(["epoch", "step", "resumed_from_epoch", "epoch_time_s", "lr"]);

function modelCard(kind, m) {
  const card = document.createElement("article");
  card.append(Object.assign(document.createElement("h3"), {textContent: kind.toUpperCase()}));
  if (!m.loaded) {
    card.append(Object.assign(document.createElement("p"), {className: "error",
      textContent: "Not loaded: " + (m.load_error || "unknown reason")}));
    return card;
  }
  const p = document.createElement("p");
  p.textContent = `checkpoint ${m.checkpoint}`;
  card.append(p);
  const scalars = Object.entries(m.metrics || {}).filter(([, v]) => typeof v === "number");
  if (scalars.length) {
    const t = document.createElement("table");
    t.append(...scalars.map(([k, v]) => row([k, String(Number(v.toPrecision(5)))])));
    card.append(t);
  }
  const details = document.createElement("details");
  details.append(Object.assign(document.createElement("summary"), {textContent: "training config"}));
  details.append(Object.assign(document.createElement("pre"), {textContent: JSON.stringify(m.config, null, 2)}));
  card.append(details);
  // one curve per (training phase, metric): the VAE job's classifier epochs follow its VAE epochs
  const hist = m.history || [];
  const curves = {};
  for (const h of hist) {
    for (const [k, v] of Object.entries(h)) {
      if (SKIP.has(k) || typeof v !== "number") continue;
      const name = h.phase ? `${k} (${h.phase})` : k;
      (curves[name] = curves[name] || []).push([curves[name].length + 1, v]);
    }
  }
  const keys = Object.keys(curves);
  if (keys.length) {
    const label = document.createElement("label");
    const select = document.createElement("select");
    select.append(...keys.map((k) => Object.assign(document.createElement("option"), {textContent: k})));
    select.value = keys.find((k) => k.startsWith("val_loss")) || keys.find((k) => k.includes("loss")) || keys[0];
    label.append("training curve ", select);
    const plot = document.createElement("div");
    const draw = () => plot.replaceChildren(chart({[select.value]: curves[select.value]}, "epoch", select.value));
    select.addEventListener("change", draw);
    draw();
    card.append(label, plot);
  }
  return card;
}

async function loadInfo() {
  info = await api("info");
  const unconditional = info.ddpm.loaded && !info.ddpm.conditional;
  $("s-cond-hint").hidden = !unconditional;
  $("s-digit").disabled = $("s-guidance").disabled = unconditional;
  $("i-out").replaceChildren(modelCard("ddpm", info.ddpm), modelCard("vae", info.vae));
  drawCurves();
}

// --- start ----------------------------------------------------------------------------------------

enlarge($("l-recon"), 3);
enlarge($("l-decoded"), 4);
enlarge($("l-traversal"), 2);

async function start() {
  try {
    const h = await api("healthz");
    $("token-needed").hidden = true;
    const state = (ok) => (ok ? "loaded" : "not loaded");
    $("status").textContent = `DDPM ${state(h.models.ddpm)}, VAE ${state(h.models.vae)}`;
  } catch (err) {
    $("status").textContent = err.status === 401
      ? "This server wants an API token: enter it above." : "Error: " + err.message;
    return;
  }
  await run(null, "info-error", loadInfo);
  await run(null, "latent-error", () => reconstruct({test_index: 0}));
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("hw4-token", $("token").value.trim());
  start();
});
start();
