// Read an .spz with spz-js (an independent reader, web/node_modules) and print it as JSON arrays.
// Usage: node tools/read_spz.mjs FILE.spz OUT.json
import fs from "fs";
import path from "path";
import { createRequire } from "module";
import { pathToFileURL } from "url";

const here = path.dirname(new URL(import.meta.url).pathname);
const entry = createRequire(path.join(here, "..", "web", "package.json")).resolve("spz-js");
const { loadSpz } = await import(pathToFileURL(entry).href);
const buf = fs.readFileSync(process.argv[2]);
const g = await loadSpz(new Uint8Array(buf));  // a Uint8Array: Node's DecompressionStream takes no ArrayBuffer
if (!g) { process.stderr.write("spz-js could not read the file\n"); process.exit(1); }
const out = {};
for (const k of ["numPoints", "shDegree", "antialiased"]) out[k] = g[k];
for (const k of ["positions", "scales", "rotations", "alphas", "colors", "sh"]) out[k] = Array.from(g[k]);
fs.writeFileSync(process.argv[3], JSON.stringify(out));
