// The avatar's splats, posed per frame exactly as glTF defines it: morph targets, then the skin.
//
// Reads what any glTF engine reads from an MVP4D .glb (three.js's GLTFLoader does the parsing): the
// "splats" POINTS primitive with KHR_gaussian_splatting attributes, JOINTS_0/WEIGHTS_0 (loaded as
// skinIndex/skinWeight), morph targets, and the skin's joints and inverse bind matrices. Each frame
// every splat centre is p = B (rest + sum_k w_k delta_k) with B the weight-blended joint matrices,
// and its orientation is the blend's rotation times the rest orientation (a rigidly skinned splat
// is exact; a blended one is rotated by its polar rotation).
import * as THREE from "three";

const SH_C0 = 0.28209479177387814;
const EXT = "khr_gaussian_splatting:";

export class SkinnedSplats {
  constructor(points, bones, inverseBind) {
    const g = points.geometry;
    this.points = points;
    this.bones = bones;
    this.inverseBind = inverseBind;
    this.count = g.attributes.position.count;
    this.rest = g.attributes.position.array;
    this.morphs = (g.morphAttributes.position || []).map((a) => a.array);
    this.skinIndex = g.attributes.skinIndex ? g.attributes.skinIndex.array : null;
    this.skinWeight = g.attributes.skinWeight ? g.attributes.skinWeight.array : null;
    this.rotation = g.attributes[EXT + "rotation"].array; // xyzw
    this.scale = g.attributes[EXT + "scale"].array;
    this.opacity = g.attributes[EXT + "opacity"].array;
    const dc = g.attributes[EXT + "sh_degree_0_coef_0"].array;
    this.color = new Float32Array(this.count * 3);
    for (let i = 0; i < this.count * 3; i++) this.color[i] = Math.min(1, Math.max(0, 0.5 + SH_C0 * dc[i]));
    this.boneMats = bones.map(() => new THREE.Matrix4());
  }

  // Writes every posed splat into Spark's PackedSplats (world space of the avatar's root).
  pose(packed, rootInverse) {
    const n = this.count;
    const w = this.points.morphTargetInfluences || [];
    for (let j = 0; j < this.bones.length; j++) {
      this.boneMats[j].multiplyMatrices(this.bones[j].matrixWorld, this.inverseBind[j]).premultiply(rootInverse);
    }
    const active = [];
    for (let k = 0; k < this.morphs.length; k++) if (w[k]) active.push(k);
    const p = new THREE.Vector3(), c = new THREE.Vector3(), s = new THREE.Vector3();
    const q = new THREE.Quaternion(), qb = new THREE.Quaternion(), col = new THREE.Color();
    const blend = new THREE.Matrix4(), rot = new THREE.Matrix4();
    const e = blend.elements;
    const xAxis = new THREE.Vector3(), yAxis = new THREE.Vector3(), zAxis = new THREE.Vector3();
    for (let i = 0; i < n; i++) {
      let x = this.rest[3 * i], y = this.rest[3 * i + 1], z = this.rest[3 * i + 2];
      for (const k of active) {
        const d = this.morphs[k];
        x += w[k] * d[3 * i]; y += w[k] * d[3 * i + 1]; z += w[k] * d[3 * i + 2];
      }
      p.set(x, y, z);
      if (this.skinIndex) {
        e.fill(0);
        for (let t = 0; t < 4; t++) {
          const wt = this.skinWeight[4 * i + t];
          if (!wt) continue;
          const m = this.boneMats[this.skinIndex[4 * i + t]].elements;
          for (let a = 0; a < 16; a++) e[a] += wt * m[a];
        }
        c.copy(p).applyMatrix4(blend);
        blend.extractBasis(xAxis, yAxis, zAxis);
        xAxis.normalize(); yAxis.normalize(); zAxis.crossVectors(xAxis, yAxis).normalize();
        yAxis.crossVectors(zAxis, xAxis);
        rot.makeBasis(xAxis, yAxis, zAxis);
        qb.setFromRotationMatrix(rot);
      } else {
        c.copy(p);
        qb.identity();
      }
      q.set(this.rotation[4 * i], this.rotation[4 * i + 1], this.rotation[4 * i + 2], this.rotation[4 * i + 3]);
      q.premultiply(qb);
      s.set(this.scale[3 * i], this.scale[3 * i + 1], this.scale[3 * i + 2]);
      col.setRGB(this.color[3 * i], this.color[3 * i + 1], this.color[3 * i + 2]);
      packed.setSplat(i, c, s, q, this.opacity[i], col);
    }
    packed.needsUpdate = true;
  }
}

// The skin's bones and inverse bind matrices for the splat node of a loaded glTF.
export async function skinOf(gltf, nodeName) {
  const json = gltf.parser.json;
  const nodeIndex = json.nodes.findIndex((nd) => nd.name === nodeName);
  const skinIndex = json.nodes[nodeIndex].skin;
  if (skinIndex === undefined) return { bones: [], inverseBind: [] };
  const skin = json.skins[skinIndex];
  const bones = await Promise.all(skin.joints.map((j) => gltf.parser.getDependency("node", j)));
  const ibm = await gltf.parser.getDependency("accessor", skin.inverseBindMatrices);
  const inverseBind = bones.map((_, j) => new THREE.Matrix4().fromArray(ibm.array, 16 * j));
  return { bones, inverseBind };
}
