// Drive a page of this package in headless Chromium (Debian's, never a downloaded one) and save what it shows.
//
// Usage: node test/serve_and_drive.mjs CONFIG.json
// CONFIG: {"page": "index.html" | "babylon.html", "glb": PATH, "out": DIR, "chromium": PATH,
//          "camera": {position, target, up, fovY, width, height} (player), "frames": [0, 5, ...]}
// Writes DIR/frame_NNNN.png (the canvas) per frame, DIR/report.json {errors, warnings, info}.
import fs from "fs";
import http from "http";
import path from "path";
import { chromium } from "playwright-core";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const types = { ".html": "text/html", ".js": "text/javascript", ".glb": "model/gltf-binary", ".wasm": "application/wasm" };
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(req.url.split("?")[0]);
  const file = url === "/avatar.glb" ? cfg.glb : path.join(root, path.normalize(url).replace(/^(\.\.[/\\])+/, ""));
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" });
    res.end(data);
  });
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;
const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-sandbox"],
});
const report = { errors: [], warnings: [], info: {} };
try {
  const cam = cfg.camera || { width: 512, height: 512 };
  const page = await browser.newPage({ viewport: { width: cam.width, height: cam.height + 40 } });
  page.on("console", (m) => { if (m.type() === "error") report.errors.push(m.text()); else if (m.type() === "warning") report.warnings.push(m.text()); });
  page.on("pageerror", (e) => report.errors.push(String(e)));
  page.on("response", (r) => { if (r.status() >= 400) report.errors.push(`HTTP ${r.status()} ${r.url()}`); });
  await page.goto(`http://127.0.0.1:${port}/${cfg.page}?src=avatar.glb${cfg.query ? "&" + cfg.query : ""}`);
  await page.waitForFunction(() => window.player && window.player.ready, null, { timeout: 60000 });
  await page.evaluate(() => window.player.ready);
  if (cfg.camera) await page.evaluate((c) => window.player.setCamera(c), cfg.camera);
  report.info = await page.evaluate(() => (window.player.info ? window.player.info() : {}));
  report.info.numFrames = await page.evaluate(() => window.player.numFrames());
  for (const f of cfg.frames || [0]) {
    await page.evaluate((k) => window.player.setFrame(k), f);
    await page.locator("#view").screenshot({ path: path.join(cfg.out, `frame_${String(f).padStart(4, "0")}.png`) });
  }
} catch (e) {
  report.errors.push(`driver: ${e && e.stack ? e.stack : e}`);
} finally {
  fs.writeFileSync(path.join(cfg.out, "report.json"), JSON.stringify(report, null, 1));
  await browser.close();
  server.close();
}
