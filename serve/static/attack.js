// The adversarial demo: one attacked test image per model, and the evaluation report's curves.
"use strict";

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
                steps: intIn("a-steps", 1, 100, "Steps")};
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
    const left = r.per_attack && byEps(r.per_attack[name], eps);
    if (left) {  // AutoAttack: the accuracy left after each of its attacks, in order
      card.append(Object.assign(document.createElement("p"), {className: "status", textContent:
        "left after " + Object.entries(left).map(([a, v]) => `${attackLabel(a)}: ${v}`).join(", ")}));
    }
    cards.push(card);
  }
  const grid = document.createElement("div");
  grid.className = "attack-grid";
  grid.append(...cards);
  $("a-out").replaceChildren(grid);
}

// the attacks the server offers (/info), in its order, with their labels
function attackLabel(name) {
  const a = info && info.attacks && info.attacks.find((x) => x.name === name);
  return a ? a.label : name.toUpperCase();
}

function fillAttacks() {
  if (!info || !info.attacks) return;
  const select = $("a-attack"), chosen = select.value;
  select.replaceChildren(...info.attacks.map((a) => Object.assign(
    document.createElement("option"), {value: a.name, textContent: a.label})));
  select.value = info.attacks.some((a) => a.name === chosen) ? chosen : info.attacks[0].name;
}

function drawCurves() {
  fillAttacks();
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
  box.replaceChildren(chart(series, "ε", `accuracy under ${attackLabel(a)}`));
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
