// The faceage page: upload each photo to /v1/analyze on this server, draw a numbered box on
// every face and list the faces, with the same numbers, in a table. Results can be saved as
// CSV or JSON, made here from the API's answers. No third-party code, no external requests.
"use strict";

const $ = (sel) => document.querySelector(sel);

// Every photo added since the last "Clear", in the order it was added. Each entry:
// { name, file, url, state: "pending" | "done" | "failed", result, error, card, frame, caption, rows }
let photos = [];
let queue = [];              // entries waiting for their upload, oldest first
let busy = false;            // an upload is under way (they go one at a time: see pump())
let aborter = new AbortController();   // replaced by "Clear", which cancels the upload in flight
let modelName = null;
let pastedCount = 0;

// ---- formatting ----------------------------------------------------------------------------

const faceNumber = (face, index) => face.number ?? index + 1;   // the API numbers faces in reading order
const pct = (p) => `${Math.round(p * 100)}%`;
const interval = (f) => (f.age_low === null || f.age_high === null ? "" : `${Math.round(f.age_low)}–${Math.round(f.age_high)}`);

function describe(face) {
  let text = face.age === null ? "age ?" : `${Math.round(face.age)}`;
  if (interval(face)) text += ` (${interval(face)})`;
  if (face.gender) text += `, ${face.gender} ${pct(face.gender_prob)}`;
  return text;
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// ---- the photo cards -----------------------------------------------------------------------

function addCard(file) {
  const name = file.name || `pasted-${++pastedCount}.png`;
  const entry = { name, file, url: URL.createObjectURL(file), state: "pending", result: null, error: null };
  entry.card = document.createElement("figure");
  entry.card.className = "card";
  entry.frame = document.createElement("div");
  entry.frame.className = "frame";
  const img = document.createElement("img");
  img.alt = `Photo ${name}`;
  // Shown only once the browser has decoded it: a file that is not an image (or a format this
  // browser cannot show, such as TIFF) must not leave a broken-image icon on the card.
  img.hidden = true;
  img.addEventListener("load", () => { img.hidden = false; });
  img.addEventListener("error", () => {
    entry.frame.remove();
    entry.previewFailed = true;
    if (entry.state === "done") entry.caption.textContent += " (this browser cannot show a preview)";
  });
  img.src = entry.url;
  entry.frame.appendChild(img);
  entry.caption = document.createElement("figcaption");
  entry.caption.textContent = `${name}: waiting…`;
  entry.card.append(entry.frame, entry.caption);
  $("#photos").appendChild(entry.card);               // appended: cards keep the upload order
  entry.rows = document.createElement("tbody");
  $("#faces").appendChild(entry.rows);                // likewise this photo's rows in the table
  photos.push(entry);
  return entry;
}

function drawFaces(entry, result) {
  // Boxes and badges in percent of the photo, so they stay on the faces at any display size.
  // Boxes are clipped to the photo (a face at the edge may be detected partly outside it).
  const x = (v) => `${(100 * Math.min(Math.max(v, 0), result.width)) / result.width}%`;
  const y = (v) => `${(100 * Math.min(Math.max(v, 0), result.height)) / result.height}%`;
  result.faces.forEach((face, i) => {
    const n = faceNumber(face, i);
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.number = n;
    box.title = `Face ${n}: ${describe(face)}`;       // on hover; the table says the same for everyone
    box.setAttribute("aria-hidden", "true");
    Object.assign(box.style, {
      left: x(x1), top: y(y1),
      width: `calc(${x(x2)} - ${x(x1)})`, height: `calc(${y(y2)} - ${y(y1)})`,
    });
    // The badge is a sibling of the box, not a child, so that CSS can keep it inside the photo
    // (see .badge in app.css): it sits on the box's top-left corner, just above the box when
    // there is room, and is pushed back in at the photo's edges. Its size is fixed in rem, so
    // it stays readable however small the photo is shown.
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = n;
    badge.dataset.number = n;
    badge.setAttribute("aria-hidden", "true");
    badge.style.setProperty("--x", x(x1));
    badge.style.setProperty("--y", y(y1));
    badge.style.setProperty("--digits", String(n).length);
    entry.frame.append(box, badge);
  });
}

function cell(row, label, content) {
  const td = document.createElement("td");
  td.dataset.label = label;                           // shown before the value on narrow screens
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = content;
  row.appendChild(td);
}

function addRows(entry, faces) {
  faces.forEach((f, i) => {
    const n = faceNumber(f, i);
    const tr = document.createElement("tr");
    tr.dataset.number = n;
    const number = document.createElement("span");
    number.className = "badge-inline";
    number.textContent = n;
    cell(tr, "Photo", entry.name);
    cell(tr, "Face", number);
    cell(tr, "Age", f.age === null ? "" : f.age.toFixed(1));
    cell(tr, "90% interval", interval(f));
    cell(tr, "Age group", f.age_bin || "");
    cell(tr, "Gender", f.gender || "");
    cell(tr, "Confidence", f.gender_prob === null ? "" : pct(f.gender_prob));
    cell(tr, "Detection", f.score === null || f.score === undefined ? "" : pct(f.score));
    cell(tr, "Note", f.low_quality ? "small face: less reliable" : "");
    entry.rows.appendChild(tr);
  });
}

function fail(entry, message) {
  entry.state = "failed";
  entry.error = message;
  entry.frame.remove();                               // the error alone, once: no preview, no broken icon
  entry.card.classList.add("failed");
  entry.caption.className = "error";
  entry.caption.textContent = `${entry.name}: ${message}`;
}

// ---- talking to the server -----------------------------------------------------------------

async function analyze(entry) {
  entry.caption.textContent = `${entry.name}: analysing…`;
  const form = new FormData();
  form.append("files", entry.file, entry.name);
  let response, body;
  try {
    response = await fetch("/v1/analyze", { method: "POST", body: form, signal: aborter.signal });
  } catch (err) {
    if (err.name !== "AbortError") fail(entry, `the server could not be reached (${err.message})`);
    return;
  }
  try {
    body = await response.json();
  } catch (err) {
    body = {};                                        // e.g. a proxy's HTML error page
  }
  if (!response.ok) {
    // The API names the file in its message ("notes.png: not an image"): keep the name once.
    let message = body.files?.[0]?.message ?? body.error ?? `${response.status} ${response.statusText}`;
    if (message.startsWith(`${entry.name}: `)) message = message.slice(entry.name.length + 2);
    fail(entry, message);
    return;
  }
  const result = body.images[0];
  entry.state = "done";
  entry.result = result;
  modelName = body.model;
  drawFaces(entry, result);
  addRows(entry, result.faces);
  const n = result.faces.length;
  entry.caption.textContent = `${entry.name}: ${n === 0 ? "no face found" : plural(n, "face")} (${Math.round(body.timing_ms.total)} ms)`;
  if (entry.previewFailed) entry.caption.textContent += " (this browser cannot show a preview)";
}

// One upload at a time: the server shares its workers between all its users, and the photos'
// order on the page is fixed by their cards anyway.
async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const entry = queue.shift();
    await analyze(entry);
    update();
  }
  busy = false;
}

function addFiles(files) {
  files = [...files];
  if (files.length === 0) return;
  queue.push(...files.map(addCard));
  update();
  pump();
}

// ---- status line, buttons, table -----------------------------------------------------------

function update() {
  const done = photos.filter((p) => p.state === "done").length;
  const failed = photos.filter((p) => p.state === "failed").length;
  const pending = photos.length - done - failed;
  let text = "";
  if (photos.length) {
    text = `${done} of ${plural(photos.length, "photo")} analysed`;
    if (failed) text += `, ${failed} failed`;
    text += pending ? `; analysing ${pending} more…` : ".";
  }
  $("#status").textContent = text;
  $("#actions").hidden = photos.length === 0;
  for (const id of ["#download-csv", "#download-json"]) $(id).disabled = done + failed === 0;
  $("#table-section").hidden = !photos.some((p) => p.result && p.result.faces.length);
}

function clearResults() {
  aborter.abort();                                    // the upload in flight, if any
  aborter = new AbortController();
  queue = [];
  for (const p of photos) {
    URL.revokeObjectURL(p.url);
    p.card.remove();
    p.rows.remove();
  }
  photos = [];
  update();
  $("#status").textContent = "Results cleared.";
}

// ---- downloads, made from the API's answers ------------------------------------------------

const CSV_COLUMNS = ["photo", "face", "age", "age_low", "age_high", "age_group", "gender", "gender_prob",
  "prob_female", "prob_male", "detection_score", "low_quality", "box_x1", "box_y1", "box_x2", "box_y2", "note"];

function csvField(value) {
  if (value === null || value === undefined) return "";
  let text = String(value);
  // A text starting with = + - @ would run as a formula in a spreadsheet: keep it text.
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

// One row per face; a photo without faces, or one that failed, gets one row saying so in
// "note", so that every uploaded file appears in the file.
function toCSV() {
  const rows = [CSV_COLUMNS];
  for (const p of photos) {
    if (p.state === "failed") rows.push([p.name, ...Array(CSV_COLUMNS.length - 2).fill(null), p.error]);
    if (p.state !== "done") continue;
    if (p.result.faces.length === 0) rows.push([p.name, ...Array(CSV_COLUMNS.length - 2).fill(null), p.result.note]);
    p.result.faces.forEach((f, i) => rows.push([
      p.name, faceNumber(f, i), f.age, f.age_low, f.age_high, f.age_bin, f.gender, f.gender_prob,
      f.gender_probs?.female, f.gender_probs?.male, f.score, f.low_quality, ...f.box,
      f.low_quality ? "small face: less reliable" : null,
    ]));
  }
  return rows.map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";   // RFC 4180
}

// The API's per-photo answers as they came, in upload order; a failed photo has "error" instead.
function toJSON() {
  const images = photos.filter((p) => p.state !== "pending")
    .map((p) => (p.state === "done" ? p.result : { filename: p.name, error: p.error }));
  return JSON.stringify({ model: modelName, images }, null, 2) + "\n";
}

function download(text, type, filename) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);  // after the browser has taken the file
}

// ---- start ---------------------------------------------------------------------------------

function setUp() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    addFiles([...e.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile()));
  });
  $("#clear").addEventListener("click", clearResults);
  $("#download-csv").addEventListener("click", () => download(toCSV(), "text/csv;charset=utf-8", "faceage-results.csv"));
  $("#download-json").addEventListener("click", () => download(toJSON(), "application/json", "faceage-results.json"));
  fetch("/v1/model").then((r) => r.json()).then((m) => {
    const s = m.metrics;
    const quality = s ? `; on ${s.n} UTKFace test faces: age error ${s.mae.toFixed(2)} years, gender ${(100 * s.gender_accuracy).toFixed(1)}% correct` : "";
    $("#model").textContent = `Model: ${m.name} (${m.architecture}, ${m.backend})${quality}. ` +
      "Estimates are uncertain: the interval is where the true age lies 9 times in 10.";
  }).catch(() => { $("#model").textContent = "Model information unavailable."; });
}

setUp();
