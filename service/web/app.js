// The page's only script: POST /translate with return_attention, draw the word-level heatmap.
"use strict";

const $ = (id) => document.getElementById(id);

function decoding() {
  return document.querySelector('input[name="decoding"]:checked').value;
}

async function showModel() {
  try {
    const response = await fetch("/models");
    const card = (await response.json()).models[0];
    const bleu = card.metrics && card.metrics.bleu !== undefined ? ` · BLEU ${card.metrics.bleu}` : "";
    $("model").textContent = `${card.id} · ${card.attention} attention · version ${card.version}${bleu}`;
  } catch (err) {
    $("model").textContent = "model card unavailable";
  }
}

async function translate(event) {
  event.preventDefault();
  const body = { q: $("source").value, decoding: decoding(), return_attention: true, return_scores: true };
  if (body.decoding === "beam") body.beam_size = Number($("beam-size").value);
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;

  $("translate").disabled = true;
  $("error").hidden = true;
  try {
    const response = await fetch("/translate", { method: "POST", headers, body: JSON.stringify(body) });
    const data = await response.json();
    if (!response.ok) throw new Error(`${response.status}: ${data.error || JSON.stringify(data)}`);
    show(data.translations[0]);
  } catch (err) {
    $("error").textContent = err.message;
    $("error").hidden = false;
  } finally {
    $("translate").disabled = false;
  }
}

function show(result) {
  $("translation").textContent = result.text;
  const timing = result.cached ? "from the cache" : `${result.queue_ms} ms queued, ${result.decode_ms} ms decoding`;
  $("details").textContent = `stopped at ${result.stop_reason} · score ${result.score.toFixed(3)} · ${timing}`;
  drawHeatmap(result.attention);
  $("result").hidden = false;
}

function drawHeatmap(attention) {
  const table = $("heatmap");
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const word of attention.source_words) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "source-word";
    th.textContent = word;
    head.appendChild(th);
  }
  // Shaded relative to the largest weight, so a flat matrix still shows its structure.
  const top = Math.max(1e-6, ...attention.words.flat());
  const rows = table.createTBody();
  attention.words.forEach((weights, i) => {
    const row = rows.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.className = "target-word";
    th.textContent = attention.target_words[i];
    row.appendChild(th);
    weights.forEach((weight, j) => {
      const cell = row.insertCell();
      cell.className = "cell";
      cell.dataset.weight = weight.toFixed(3);
      cell.dataset.label = `${attention.target_words[i]} ← ${attention.source_words[j]}`;
      cell.style.backgroundColor = `rgba(37, 99, 235, ${Math.min(1, Math.max(0, weight / top))})`;
      cell.setAttribute("aria-label", `${cell.dataset.label}: ${cell.dataset.weight}`);
    });
  });
}

function hover(event) {
  const cell = event.target.closest("td.cell");
  const tip = $("tooltip");
  if (!cell) {
    tip.hidden = true;
    return;
  }
  const text = `${cell.dataset.label}: ${cell.dataset.weight}`;
  tip.textContent = text;
  $("weight").textContent = text;
  tip.style.left = `${event.pageX + 12}px`;
  tip.style.top = `${event.pageY + 12}px`;
  tip.hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", translate);
  for (const radio of document.querySelectorAll('input[name="decoding"]')) {
    radio.addEventListener("change", () => ($("beam-size").disabled = decoding() !== "beam"));
  }
  $("heatmap").addEventListener("mouseover", hover);
  $("heatmap").addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  showModel();
});
