// The hw4 playground: plain JavaScript over the Serve app's own HTTP API (no libraries, no CDN).
// Classic scripts sharing one global scope, loaded in order by index.html: common.js (this:
// talking to the API, small DOM helpers), chart.js, sampler.js, latent.js, attack.js, models.js,
// and app.js, which starts the page.
"use strict";

const CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];
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

// POST ``body`` to a server-sent-events route: ``onEvent(name, data)`` for each event as it
// arrives; resolves with the data of the "done" event, throws on an "error" event or a refusal.
async function apiStream(path, body, onEvent) {
  const headers = {"Content-Type": "application/json", Accept: "text/event-stream"};
  if (token()) headers.Authorization = "Bearer " + token();
  let res;
  try {
    res = await fetch(BASE + path, {method: "POST", headers, body: JSON.stringify(body)});
  } catch (err) {
    throw new Error("could not reach the server (" + err.message + ")");
  }
  if (!res.ok) {
    const err = new Error(describe(res.status, await res.json().catch(() => null)));
    err.status = res.status;
    if (res.status === 401) { $("token-needed").hidden = false; $("token").focus(); }
    throw err;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) throw new Error("the stream ended before the samples arrived");
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {  // one event: "event: name\ndata: {...}"
      const lines = buffer.slice(0, cut).split("\n");
      buffer = buffer.slice(cut + 2);
      const name = lines.find((l) => l.startsWith("event: ")).slice(7);
      const data = JSON.parse(lines.find((l) => l.startsWith("data: ")).slice(6));
      if (name === "error") throw new Error(data.detail);
      if (name === "done") { reader.cancel(); return data; }
      onEvent(name, data);
    }
  }
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

// A table row of cells given as text; the first ``heads`` cells are header cells.
function row(cells, heads = 1) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => tr.append(Object.assign(document.createElement(i < heads ? "th" : "td"),
                                                  {textContent: c})));
  return tr;
}

// what a person reads for an attacked model's name (the server's /info says)
function modelName(name) { return (info && info.attack_targets && info.attack_targets[name]) || name; }
