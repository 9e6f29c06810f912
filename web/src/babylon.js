// Babylon.js loading an MVP4D .glb with nothing of ours but the loading: the stock glTF loader
// (KHR_gaussian_splatting, KHR_node_visibility) and a default camera. Used by the engine tests.
import { ArcRotateCamera, Color4, Engine, Scene, SceneLoader, Vector3 } from "@babylonjs/core";
import "@babylonjs/loaders/glTF";

const canvas = document.getElementById("view");
const engine = new Engine(canvas, false, { preserveDrawingBuffer: true });
const scene = new Scene(engine);
scene.clearColor = new Color4(0, 0, 0, 1);
const camera = new ArcRotateCamera("camera", Math.PI / 2, Math.PI / 2, 0.9, new Vector3(0, 0.02, 0), scene);
camera.fov = 0.5;
camera.minZ = 0.01;
camera.attachControl(canvas, true);
const src = new URLSearchParams(location.search).get("src") || "avatar.glb";
const ready = SceneLoader.AppendAsync("", src, scene).then(() => {
  engine.runRenderLoop(() => scene.render());
  return true;
});
const frames = (n) => new Promise((r) => { let k = 0; const tick = () => (++k >= n ? r() : requestAnimationFrame(tick)); requestAnimationFrame(tick); });
window.player = {
  ready,
  async numFrames() { return 1; },
  setCamera() {},
  async setFrame() { await frames(30); },
  info() {
    return {
      meshes: scene.meshes.map((m) => ({ name: m.name, class: m.getClassName(), visible: m.isVisible && m.isEnabled(),
        vertices: m.getTotalVertices ? m.getTotalVertices() : 0 })),
      animations: scene.animationGroups.map((g) => g.name),
    };
  },
};
