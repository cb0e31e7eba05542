// The served models: checkpoint, metrics, config and training curves, from /info.
"use strict";

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
  p.textContent = `checkpoint ${m.checkpoint}` + (m.run ? `, from run ${m.run}` : "");
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
  fillSamplers();
  drawCurves();
}
