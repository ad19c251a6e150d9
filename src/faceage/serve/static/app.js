// The faceage page: upload each photo to /v1/analyze on this server, draw the boxes and labels
// over the photo, and list every face in a table. No third-party code, no external requests.
"use strict";

const $ = (sel) => document.querySelector(sel);
let photoCount = 0;

function labelFor(face) {
  let text = face.age === null ? "?" : `${Math.round(face.age)}`;
  if (face.age_low !== null) text += ` (${Math.round(face.age_low)}–${Math.round(face.age_high)})`;
  if (face.gender) text += `, ${face.gender} ${Math.round(face.gender_prob * 100)}%`;
  return text;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function addRows(name, faces) {
  const body = $("#faces tbody");
  faces.forEach((f, i) => {
    const tr = document.createElement("tr");
    cell(tr, name);
    cell(tr, String(i + 1));
    cell(tr, f.age === null ? "" : f.age.toFixed(1));
    cell(tr, f.age_low === null ? "" : `${Math.round(f.age_low)}–${Math.round(f.age_high)}`);
    cell(tr, f.age_bin || "");
    cell(tr, f.gender || "");
    cell(tr, f.gender_prob === null ? "" : `${Math.round(f.gender_prob * 100)}%`);
    cell(tr, `${Math.round(f.score * 100)}%`);
    cell(tr, f.low_quality ? "small face: less reliable" : "");
    body.appendChild(tr);
  });
  $("#table-section").hidden = body.children.length === 0;
}

function drawFaces(frame, result) {
  // Boxes in percent of the photo, so they stay on the faces at any display size.
  result.faces.forEach((f) => {
    const [x1, y1, x2, y2] = f.box;
    const box = document.createElement("div");
    box.className = "box";
    box.style.left = `${(100 * x1) / result.width}%`;
    box.style.top = `${(100 * y1) / result.height}%`;
    box.style.width = `${(100 * (x2 - x1)) / result.width}%`;
    box.style.height = `${(100 * (y2 - y1)) / result.height}%`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = labelFor(f);
    box.appendChild(label);
    frame.appendChild(box);
  });
}

async function analyzeFile(file) {
  const name = file.name || `pasted-${photoCount + 1}.png`;
  photoCount += 1;
  const figure = document.createElement("figure");
  const frame = document.createElement("div");
  frame.className = "frame";
  const img = document.createElement("img");
  img.alt = `Photo ${name}`;
  img.src = URL.createObjectURL(file);
  frame.appendChild(img);
  const caption = document.createElement("figcaption");
  caption.textContent = `${name}: analysing…`;
  figure.append(frame, caption);
  $("#photos").prepend(figure);

  const form = new FormData();
  form.append("files", file, name);
  try {
    const response = await fetch("/v1/analyze", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      caption.textContent = `${name}: ${body.error || response.statusText}`;
      caption.className = "error";
      return;
    }
    const result = body.images[0];
    drawFaces(frame, result);
    const n = result.faces.length;
    caption.textContent = `${name}: ${n === 0 ? "no face found" : n === 1 ? "1 face" : `${n} faces`} (${Math.round(body.timing_ms.total)} ms)`;
    addRows(name, result.faces);
  } catch (err) {
    caption.textContent = `${name}: the server could not be reached (${err.message})`;
    caption.className = "error";
  }
}

async function analyzeAll(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
  if (images.length === 0) {
    $("#status").textContent = "Those were not images.";
    return;
  }
  $("#status").textContent = `Analysing ${images.length} photo${images.length > 1 ? "s" : ""}…`;
  for (const file of images) await analyzeFile(file);   // one at a time: the server stays responsive
  $("#status").textContent = `Done: ${photoCount} photo${photoCount > 1 ? "s" : ""} analysed.`;
}

function setUp() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { analyzeAll(e.target.files); e.target.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); analyzeAll(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    const files = [...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
    if (files.length) analyzeAll(files);
  });
  fetch("/v1/model").then((r) => r.json()).then((m) => {
    const s = m.metrics;
    const quality = s ? `; on ${s.n} UTKFace test faces: age error ${s.mae.toFixed(2)} years, gender ${(100 * s.gender_accuracy).toFixed(1)}% correct` : "";
    $("#model").textContent = `Model: ${m.name} (${m.architecture}, ${m.backend})${quality}. ` +
      "Estimates are uncertain: the interval is where the true age lies 9 times in 10.";
  }).catch(() => { $("#model").textContent = "Model information unavailable."; });
}

setUp();
