// MVP4D web player: loads an exported avatar .glb and plays its animation with three.js + Spark.
//
// The .glb is read with three.js's stock GLTFLoader (the head, skeleton, morph weights and the
// animation); the splats are drawn by Spark (one SplatMesh: sorted across the whole avatar) and posed
// every frame from the file's morph targets and skin (avatar.js: on the GPU, morphs in a dyno program
// and the skin in Spark's SplatSkinning; in JavaScript with ?skin=cpu). Controls: play/pause, a timeline,
// orbit (drag, wheel). URL: index.html?src=avatar.glb. For tests, window.player exposes setFrame,
// setCamera and a `ready` promise.
import * as THREE from "three";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { PackedSplats, SparkRenderer, SplatMesh, SplatSkinning, SplatSkinningMode, dyno } from "@sparkjsdev/spark";
import { SkinnedSplats, skinOf } from "./avatar.js";

const params = new URLSearchParams(location.search);
const canvas = document.getElementById("view");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
const scene = new THREE.Scene();
scene.background = new THREE.Color(params.get("bg") || "#000000");
const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 100);
camera.position.set(0, 0.02, 0.9);
const controls = new OrbitControls(camera, canvas);
controls.target.set(0, 0.02, 0);
const spark = new SparkRenderer({ renderer });
scene.add(spark);

function resize() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
}

const ui = {
  play: document.getElementById("play"),
  time: document.getElementById("time"),
  label: document.getElementById("label"),
};

async function load(src) {
  const gltf = await new GLTFLoader().loadAsync(src);
  scene.add(gltf.scene);
  gltf.scene.updateMatrixWorld(true);
  const json = gltf.parser.json;
  // the head proxy: hidden when the file says so (KHR_node_visibility, which GLTFLoader does not read)
  json.nodes.forEach((nd, i) => {
    const hidden = nd.extensions && nd.extensions.KHR_node_visibility && nd.extensions.KHR_node_visibility.visible === false;
    if (hidden) gltf.parser.getDependency("node", i).then((o) => { o.visible = false; });
  });
  const points = gltf.scene.getObjectByName("splats");
  if (!points) throw new Error("this .glb has no 'splats' node (export it with skinned or static splats)");
  points.visible = false; // drawn by Spark instead of as GL points
  const { bones, inverseBind } = await skinOf(gltf, "splats");
  const splats = new SkinnedSplats(points, bones, inverseBind);
  const packed = new PackedSplats({ maxSplats: splats.count });
  const mesh = new SplatMesh({ packedSplats: packed });
  gltf.scene.add(mesh);
  await mesh.initialized;
  if (splats.skinIndex && params.get("skin") !== "cpu") {
    splats.attachGpuSkin(mesh, SplatSkinning, SplatSkinningMode);
    splats.attachGpuMorphs(dyno);
    mesh.updateGenerator();
  }
  window.player.skin = !splats.skinIndex ? "none" : splats.gpuSkin ? "gpu" : "cpu";
  window.player.morphs = splats.gpuMorphs ? "gpu" : "cpu";
  const clip = gltf.animations[0];
  const mixer = new THREE.AnimationMixer(gltf.scene);
  const times = clip ? clip.tracks[0].times : new Float32Array([0]);
  if (clip) mixer.clipAction(clip).play();
  const rootInverse = new THREE.Matrix4();
  let playing = false, t = 0;

  function apply(time) {
    t = Math.max(0, Math.min(time, clip ? clip.duration : 0));
    mixer.setTime(t);
    gltf.scene.updateMatrixWorld(true);
    rootInverse.copy(gltf.scene.matrixWorld).invert();
    splats.pose(packed, rootInverse);
    mesh.needsUpdate = true;
    const frame = nearestFrame(t);
    ui.time.value = String(frame);
    ui.label.textContent = `frame ${frame} / ${times.length - 1}`;
  }
  const nearestFrame = (time) => times.reduce((best, x, i) => (Math.abs(x - time) < Math.abs(times[best] - time) ? i : best), 0);
  ui.time.max = String(times.length - 1);
  ui.time.addEventListener("input", () => { playing = false; ui.play.textContent = "Play"; apply(times[+ui.time.value]); });
  ui.play.addEventListener("click", () => { playing = !playing; ui.play.textContent = playing ? "Pause" : "Play"; });
  apply(0);
  let last = performance.now();
  renderer.setAnimationLoop((now) => {
    const dt = (now - last) / 1000;
    last = now;
    if (playing && clip) apply((t + dt) % clip.duration);
    controls.update();
    renderer.render(scene, camera);
  });
  return { gltf, splats, times, apply };
}

function setCamera({ position, target, up, fovY, width, height, near = 0.01, far = 100 }) {
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  camera.position.fromArray(position);
  camera.up.fromArray(up || [0, 1, 0]);
  controls.target.fromArray(target);
  camera.lookAt(controls.target);
  camera.fov = fovY;
  camera.near = near;
  camera.far = far;
  resize();
}

resize();
window.addEventListener("resize", resize);
const ready = load(params.get("src") || "avatar.glb");
window.player = {
  ready: ready.then(() => true),
  async setFrame(frame) {
    const p = await ready;
    p.apply(p.times[frame]);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    await new Promise((r) => setTimeout(r, 300));
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  },
  setCamera,
  async numFrames() { return (await ready).times.length; },
  info() { return { skin: window.player.skin, morphs: window.player.morphs }; },
};
ready.catch((e) => { console.error(e); document.getElementById("label").textContent = String(e); });
