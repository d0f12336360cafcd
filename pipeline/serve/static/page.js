// The page of `dhmd-pipeline serve`: send a clip (chosen, dropped or recorded) to POST /predict?explain=1
// and show the answer. Plain JavaScript, nothing fetched from elsewhere.
"use strict";

const MODALITIES = ["text", "audio", "video"];
const $ = (id) => document.getElementById(id);
let busy = false;

function show(id, on) { $(id).hidden = !on; }
function setStatus(text) { $("status").textContent = text; }
function setError(text) { $("error").textContent = text || ""; show("error", Boolean(text)); }
function fmt(x, digits = 2) { return (x >= 0 ? "+" : "") + Number(x).toFixed(digits); }

async function describeModel() {
  try {
    const r = await fetch("model", { credentials: "same-origin" });
    const m = await r.json();
    if (!r.ok) throw new Error(m.error || r.statusText);
    const name = String(m.checkpoint || "").split("/").slice(-2).join("/");
    let line = `model ${name} (${m.task}, epoch ${m.epoch})`;
    const test = m.metrics && m.metrics.test;
    if (test && test.MAE !== undefined) line += ` · test MAE ${Number(test.MAE).toFixed(3)}`;
    if (test && test.Has0_acc_2 !== undefined) line += ` · test binary accuracy ${(100 * test.Has0_acc_2).toFixed(1)} %`;
    $("model-line").textContent = line;
  } catch (e) {
    $("model-line").textContent = `model description unavailable (${e.message})`;
  }
}

function barRow(name, value) {
  const tr = document.createElement("tr");
  const label = document.createElement("td");
  label.textContent = name;
  const cell = document.createElement("td");
  const num = document.createElement("td");
  if (typeof value === "number") {
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    const frac = Math.max(-3, Math.min(3, value)) / 6;          // -0.5 .. 0.5 of the width
    fill.style.left = `${50 + Math.min(0, frac) * 100}%`;
    fill.style.width = `${Math.abs(frac) * 100}%`;
    fill.style.background = value >= 0 ? "#3a9a5b" : "#d0473e";
    bar.appendChild(fill);
    cell.appendChild(bar);
    num.textContent = fmt(value);
  } else if (value && typeof value === "object") {             // classification: {class: p}
    const best = Object.keys(value).reduce((a, b) => (value[a] >= value[b] ? a : b));
    num.textContent = `${best} (${(100 * value[best]).toFixed(0)} %)`;
  } else {
    num.textContent = "–";
  }
  tr.append(label, cell, num);
  return tr;
}

function matrix(table, edges) {
  table.replaceChildren();
  if (!edges) { table.textContent = "this model has no distillation graph"; return; }
  const max = Math.max(...edges.flat(), 1e-9);
  const head = document.createElement("tr");
  head.appendChild(document.createElement("th")).textContent = "teacher \\ student";
  MODALITIES.forEach((m) => { head.appendChild(document.createElement("th")).textContent = m; });
  table.appendChild(head);
  edges.forEach((row, i) => {
    const tr = document.createElement("tr");
    tr.appendChild(document.createElement("th")).textContent = MODALITIES[i];
    row.forEach((w, j) => {
      const td = document.createElement("td");
      td.textContent = i === j ? "·" : w.toFixed(2);
      if (i !== j) td.style.background = `rgba(47, 111, 222, ${(0.08 + 0.72 * w / max).toFixed(3)})`;
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
}

function render(r) {
  const score = $("score");
  if (typeof r.score === "number") {
    score.textContent = fmt(r.score);
    score.className = "big " + (r.score >= 0 ? "pos" : "neg");
  } else if (r.probabilities) {
    const best = Object.keys(r.probabilities).reduce((a, b) => (r.probabilities[a] >= r.probabilities[b] ? a : b));
    score.textContent = `${best} ${(100 * r.probabilities[best]).toFixed(0)} %`;
    score.className = "big";
  }
  $("label7").textContent = r.label_7 || "–";
  $("label2").textContent = r.label_2 || "–";
  $("transcript").textContent = r.transcript || "(no words were recognised)";
  const flags = $("flags");
  flags.replaceChildren();
  (r.flags || []).forEach((f) => { flags.appendChild(document.createElement("li")).textContent = `caution: ${f}`; });
  const uni = $("unimodal");
  uni.replaceChildren();
  MODALITIES.forEach((m) => uni.appendChild(barRow(m, (r.unimodal || {})[m])));
  matrix($("edges-homo"), r.edges_homo);
  matrix($("edges-hetero"), r.edges_hetero);
  const img = $("explanation");
  if (r.explanation_png) { img.src = r.explanation_png; img.hidden = false; } else { img.hidden = true; }
  const copy = Object.assign({}, r);
  if (copy.explanation_png) copy.explanation_png = copy.explanation_png.slice(0, 40) + "…";
  $("json").textContent = JSON.stringify(copy, null, 2);
  show("result", true);
}

async function analyse(blob, name) {
  if (busy) return;
  busy = true;
  setError("");
  setStatus(`analysing ${name} … (transcribing, reading the face and the voice: a few seconds)`);
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const r = await fetch("predict?explain=1", { method: "POST", body: form, credentials: "same-origin" });
    let body;
    try { body = await r.json(); } catch (e) { body = { error: `${r.status} ${r.statusText}` }; }
    if (!r.ok) {
      setStatus("");
      setError(`${name}: ${r.status}: ${body.error || r.statusText}`);
      return;
    }
    setStatus(`${name}: done in ${Number(body.time_s).toFixed(1)} s`);
    render(body);
  } catch (e) {
    setStatus("");
    setError(`${name}: the server did not answer (${e.message})`);
  } finally {
    busy = false;
  }
}

// choose or drop a file
$("file-input").addEventListener("change", (ev) => {
  const f = ev.target.files[0];
  if (f) analyse(f, f.name);
  ev.target.value = "";
});
const zone = $("drop-zone");
["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.remove("over"); }));
zone.addEventListener("drop", (ev) => {
  const f = ev.dataTransfer.files[0];
  if (f) analyse(f, f.name);
});

// record from the webcam (MediaRecorder writes WebM; the server reads it)
let stream = null, recorder = null, chunks = [];
$("cam-start").addEventListener("click", async () => {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (e) {
    $("cam-note").textContent = `no camera (${e.name}: ${e.message})`;
    return;
  }
  const v = $("preview");
  v.srcObject = stream;
  v.classList.add("on");
  v.play();
  $("rec-start").disabled = false;
  $("cam-note").textContent = "camera on: press Record, speak a sentence or two, then Stop.";
});
$("rec-start").addEventListener("click", () => {
  chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (ev) => { if (ev.data.size) chunks.push(ev.data); };
  recorder.onstop = () => {
    const type = recorder.mimeType || "video/webm";
    analyse(new Blob(chunks, { type }), `webcam-${new Date().toISOString().replace(/[:.]/g, "-")}.webm`);
  };
  recorder.start();
  $("rec-start").disabled = true;
  $("rec-stop").disabled = false;
  $("cam-note").textContent = "recording…";
});
$("rec-stop").addEventListener("click", () => {
  if (recorder && recorder.state === "recording") recorder.stop();
  $("rec-start").disabled = false;
  $("rec-stop").disabled = true;
  $("cam-note").textContent = "recorded; sending it.";
});

describeModel();
