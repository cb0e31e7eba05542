// The DDPM sampler panel: DPM-Solver++(2M), DDIM or DDPM, digit and guidance, the chain streamed
// live, and the pinned classifier's verdicts.
"use strict";

// the served DDPM's number of diffusion steps T (DDPM sampling always takes all of them)
function servedT() { return (info && info.ddpm.config && info.ddpm.config.timesteps) || 1000; }

function servedConditional() { return Boolean(info && info.ddpm && info.ddpm.conditional); }

// Draw ``params`` into ``out``, live: the server streams x-hat-0 (its current guess of the
// final images) every few network calls, shown in place with a progress bar, then the samples.
async function sample(params, verdicts, out) {
  const t0 = performance.now();
  const labels = {ddpm: `DDPM-${servedT()}`, ddim: `DDIM-${params.steps}, η=${params.eta}`,
                  "dpm++2m": `DPM-Solver++(2M)-${params.steps}`};
  let label = labels[params.sampler];
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
  await sample({...p, sampler: "ddim", steps: Math.min(50, T), eta: 0}, false, $("s-out"));
}));
