// The VAE latent explorer: reconstruct, move the sliders over mu, traverse dimensions.
"use strict";

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
