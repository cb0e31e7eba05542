// The DDPM sampler panel: the server's samplers (/info), digit and guidance, the chain streamed
// live, and the pinned classifier's verdicts.
"use strict";

// the served DDPM's number of diffusion steps T (DDPM sampling always takes all of them)
function servedT() { return (info && info.ddpm.config && info.ddpm.config.timesteps) || 1000; }

function servedConditional() { return Boolean(info && info.ddpm && info.ddpm.conditional); }

// Draw ``params`` into ``out``, live: the server streams x-hat-0 (its current guess of the
// final images) every few network calls, shown in place with a progress bar, then the samples.
async function sample(params, verdicts, out) {
  const t0 = performance.now();
  let label = samplerLabel(params);
  if (params.labels !== undefined) label += `, w=${params.guidance}`;
  const blank = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
  const live = figure(blank, `${label}: starting`, `${label}: the chain as it runs`);
  const bar = Object.assign(document.createElement("progress"), {max: 1, value: 0});
  live.classList.add("live");
  live.insertBefore(bar, live.querySelector("figcaption"));
  out.append(live);
  const r = await apiStream("ddpm/sample/stream", params, (name, p) => {
    bar.max = p.total;
    bar.value = p.step;
    const caption = `${label}: step ${p.step} of ${p.total}, x̂₀ so far`;
    live.querySelector("figcaption").textContent = caption;
    if (p.preview_png_base64) live.querySelector("img").src = png(p.preview_png_base64);
  });
  if (verdicts) showVerdicts(r);
  const done = figure(png(r.grid_png_base64),
                      `${label}, seed ${params.seed}: ${r.seconds.toFixed(2)} s on the server, ` +
                      `${((performance.now() - t0) / 1000).toFixed(2)} s here`, `${r.shape[0]} samples, ${label}`);
  live.replaceWith(done);
  return done;
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

// the samplers the server offers (/info: hw4.samplers' registry), in its order
function samplerInfo(name) {
  return (info && info.samplers || []).find((k) => k.name === name) ||
         {name, label: name, default_steps: null, uses_eta: false};
}

function samplerLabel(p) {
  const k = samplerInfo(p.sampler);
  if (k.default_steps === null) return `${k.label}-${servedT()}`;
  return `${k.label}-${p.steps}` + (k.uses_eta ? `, η=${p.eta}` : "");
}

function fillSamplers() {
  if (!info || !info.samplers) return;
  const select = $("s-sampler");
  select.replaceChildren(...info.samplers.map((k) => Object.assign(
    document.createElement("option"),
    {value: k.name, textContent: k.default_steps === null ? `${k.label} (all T steps)` : k.label})));
  select.value = info.default_sampler;
  showSamplerOptions(true);
  $("s-compare").textContent = `DDPM (all T) vs DDIM-${samplerInfo("ddim").default_steps}, same seed`;
}

// steps and eta where the chosen sampler takes them; a new sampler starts at its default steps
function showSamplerOptions(reset) {
  const k = samplerInfo($("s-sampler").value);
  $("s-steps").disabled = k.default_steps === null;
  if (reset && k.default_steps !== null) $("s-steps").value = k.default_steps;
  $("s-eta").disabled = !k.uses_eta;
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
$("s-sampler").addEventListener("change", () => showSamplerOptions(true));
$("s-guidance").addEventListener("input", () => { $("s-guidance-out").value = $("s-guidance").value; });
$("sample-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run($("s-go"), "sampler-error", async () => {
    const p = samplerParams();
    $("s-out").replaceChildren();
    await sample(p, true, $("s-out"));
  });
});
$("s-compare").addEventListener("click", () => run($("s-compare"), "sampler-error", async () => {
  const p = samplerParams();
  const T = servedT();
  $("s-verdicts").replaceChildren();
  $("s-out").replaceChildren();
  await sample({...p, sampler: "ddpm", steps: T, eta: 1}, false, $("s-out"));
  const ddim = samplerInfo("ddim");
  await sample({...p, sampler: "ddim", steps: Math.min(ddim.default_steps, T), eta: 0}, false,
               $("s-out"));
}));
