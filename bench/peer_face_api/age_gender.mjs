/**
 * @vladmandic/face-api ageGenderNet on face crops, one face at a time (peer benchmark for faceage).
 *
 *   node age_gender.mjs LIST [--backend wasm|cpu]
 *
 * LIST: a .json array of image paths, a text file with one path per line, or "-" to read paths
 * from stdin and answer each line as it comes (bench/peer_face_api.py drives it that way so that
 * faces alternate between face-api and faceage). A path is a JPEG, decoded with jpeg-js (pure JS),
 * or a uint8 (H, W, 3) RGB .npy (the driver passes Pillow's pixels, the very ones faceage gets).
 * Every input is taken as an already cropped face: no detector runs, only
 * ageGenderNet.predictAgeAndGender on the whole image (face-api pads it to a square and resizes it
 * bilinearly to 112x112 itself). face-api's node-wasm build runs on @tensorflow/tfjs 4.22.0 with
 * the WASM backend (SIMD, one thread: tfjs 4.22 has no threaded WASM in node); --backend cpu is
 * the pure-JS fallback. The weights come from the npm package's model/ folder, nothing is downloaded.
 *
 * stdout: one JSON line per image {path, age, gender, genderProbability, ms}; ms is the time from
 * the decoded RGB pixels to the answer (tensor creation + resize + network + read-back), batch 1.
 * Log lines go to stderr.
 */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import jpeg from 'jpeg-js';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const wasm = require('@tensorflow/tfjs-backend-wasm');
const { tf } = faceapi;

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const list = args[0];
if (!list) { console.error('usage: node age_gender.mjs LIST|- [--backend wasm|cpu]'); process.exit(2); }

const backend = opt('--backend', 'wasm');
if (backend === 'wasm') wasm.setWasmPaths(path.join(here, 'node_modules/@tensorflow/tfjs-backend-wasm/dist/'));
await tf.setBackend(backend);
await tf.ready();
await faceapi.nets.ageGenderNet.loadFromDisk(path.join(here, 'node_modules/@vladmandic/face-api/model'));
const simd = backend === 'wasm' ? `, simd ${await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')}, threads ${wasm.getThreadsCount()}` : '';
console.error(`face-api ${faceapi.version}, tfjs ${tf.version_core}, backend ${tf.getBackend()}${simd}`);

function decode(file) {
  const buf = fs.readFileSync(file);
  if (file.endsWith('.npy')) { // uint8 (H, W, 3), numpy format v1: magic, version, header length, header
    const n = buf.readUInt16LE(8);
    const header = buf.toString('latin1', 10, 10 + n);
    if (!header.includes("'|u1'") || header.includes("'fortran_order': True")) throw new Error(`${file}: expected C-order uint8`);
    return { data: buf.subarray(10 + n), shape: header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((d) => d.trim()).map(Number) };
  }
  const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: false });
  return { data: img.data, shape: [img.height, img.width, 3] };
}

async function predict({ data, shape }) {
  const t0 = process.hrtime.bigint();
  const x = tf.tensor3d(data, shape, 'int32');
  const r = await faceapi.nets.ageGenderNet.predictAgeAndGender(x);
  x.dispose();
  return { ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

let warm = false;
async function run(file) {
  const img = decode(file);
  if (!warm) { for (let i = 0; i < 3; i++) await predict(img); warm = true; } // load kernels outside the timed call
  const { age, gender, genderProbability, ms } = await predict(img);
  process.stdout.write(`${JSON.stringify({ path: file, age, gender, genderProbability, ms })}\n`);
}

if (list === '-') {
  for await (const line of readline.createInterface({ input: process.stdin })) if (line.trim()) await run(line.trim());
} else {
  const text = fs.readFileSync(list, 'utf8');
  const files = list.endsWith('.json') ? JSON.parse(text) : text.split('\n').map((s) => s.trim()).filter(Boolean);
  for (const file of files) await run(file);
}
