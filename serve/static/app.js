// Starts the page: health, then model info, then the latent explorer on test image 0.
"use strict";

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
