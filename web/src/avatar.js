// The avatar's splats, posed per frame exactly as glTF defines it: morph targets, then the skin.
//
// Reads what any glTF engine reads from an MVP4D .glb (three.js's GLTFLoader does the parsing): the
// "splats" POINTS primitive with KHR_gaussian_splatting attributes, JOINTS_0/WEIGHTS_0 (loaded as
// skinIndex/skinWeight), morph targets, and the skin's joints and inverse bind matrices. Each frame
// every splat centre is p = B (rest + sum_k w_k delta_k) with B the blended skin matrices of its
// joints. By default both run on the GPU: the morph targets in a small dyno program (a texture of
// deltas, one of weights) that Spark runs just before its SplatSkinning (dual-quaternion blending,
// which also rotates each splat); the splats are uploaded once. ?skin=cpu does both here in
// JavaScript (linear blending, the splat rotated by the blend's polar rotation).
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

  // The skin matrices M_j = (root^-1) joint_j inverseBind_j of the current frame (this.boneMats).
  updateBones(rootInverse) {
    for (let j = 0; j < this.bones.length; j++) {
      this.boneMats[j].multiplyMatrices(this.bones[j].matrixWorld, this.inverseBind[j]).premultiply(rootInverse);
    }
  }

  // GPU skinning with Spark's SplatSkinning (dual quaternions): each splat's joints and weights once;
  // every bone's rest pose is the identity at the origin, so its current pose is its skin matrix.
  attachGpuSkin(mesh, SplatSkinning, SplatSkinningMode) {
    const skin = new SplatSkinning({ mesh, numSplats: this.count, numBones: this.bones.length,
      mode: SplatSkinningMode.DUAL_QUATERNION });
    const idx = new THREE.Vector4(), wt = new THREE.Vector4();
    for (let i = 0; i < this.count; i++) {
      idx.fromArray(this.skinIndex, 4 * i);
      wt.fromArray(this.skinWeight, 4 * i);
      skin.setSplatBones(i, idx, wt);
    }
    skin.skinTexture.needsUpdate = true;
    for (let j = 0; j < this.bones.length; j++) skin.setRestQuatPos(j, new THREE.Quaternion(), new THREE.Vector3());
    mesh.skinning = skin;
    mesh.updateGenerator();
    this.gpuSkin = skin;
  }

  // GPU morph targets: every splat's deltas in one float texture (texel i * M + k), the weights in
  // another, added to the splat centre by a dyno program that runs just before Spark's skinning.
  attachGpuMorphs(dyno) {
    const M = this.morphs.length;
    if (!M || !this.gpuSkin) return;
    const W = 4096, H = Math.ceil((this.count * M) / W);
    const data = new Float32Array(W * H * 4);
    for (let i = 0; i < this.count; i++) {
      for (let k = 0; k < M; k++) {
        const t = 4 * (i * M + k), d = this.morphs[k];
        data[t] = d[3 * i]; data[t + 1] = d[3 * i + 1]; data[t + 2] = d[3 * i + 2];
      }
    }
    const deltaTex = new THREE.DataTexture(data, W, H, THREE.RGBAFormat, THREE.FloatType);
    deltaTex.needsUpdate = true;
    this.weightData = new Float32Array(M * 4);
    this.weightTex = new THREE.DataTexture(this.weightData, M, 1, THREE.RGBAFormat, THREE.FloatType);
    this.weightTex.needsUpdate = true;
    const deltas = new dyno.DynoSampler2D({ key: "deltas", value: deltaTex });
    const weights = new dyno.DynoSampler2D({ key: "weights", value: this.weightTex });
    const numTargets = new dyno.DynoInt({ key: "numTargets", value: M });
    const morph = (gsplat) => new dyno.Dyno({
      inTypes: { gsplat: dyno.Gsplat, deltas: "sampler2D", weights: "sampler2D", numTargets: "int" },
      outTypes: { gsplat: dyno.Gsplat },
      inputs: { gsplat, deltas, weights, numTargets },
      statements: ({ inputs, outputs }) => dyno.unindentLines(`
        ${outputs.gsplat} = ${inputs.gsplat};
        if (isGsplatActive(${outputs.gsplat}.flags)) {
          for (int k = 0; k < ${inputs.numTargets}; k++) {
            float w = texelFetch(${inputs.weights}, ivec2(k, 0), 0).r;
            if (w != 0.0) {
              int t = ${outputs.gsplat}.index * ${inputs.numTargets} + k;
              ${outputs.gsplat}.center += w * texelFetch(${inputs.deltas}, ivec2(t % ${W}, t / ${W}), 0).xyz;
            }
          }
        }
      `),
    }).outputs.gsplat;
    const skinModify = this.gpuSkin.modify.bind(this.gpuSkin);
    this.gpuSkin.modify = (gsplat) => skinModify(morph(gsplat));
    this.gpuMorphs = true;
  }

  // Bones of the current frame into the GPU skin (after updateBones).
  poseGpuSkin() {
    const q = new THREE.Quaternion(), t = new THREE.Vector3(), s = new THREE.Vector3();
    for (let j = 0; j < this.bones.length; j++) {
      this.boneMats[j].decompose(t, q, s);
      this.gpuSkin.setBoneQuatPos(j, q, t);
    }
    this.gpuSkin.updateBones();
  }

  // Writes every splat into Spark's PackedSplats: morph targets applied, and the skin too unless a
  // GPU skin is attached (then the splats stay at the bind pose and Spark skins them).
  pose(packed, rootInverse) {
    const n = this.count;
    const w = this.points.morphTargetInfluences || [];
    this.updateBones(rootInverse);
    if (this.gpuMorphs) {  // everything on the GPU: new weights and bones only (the splats are written once)
      for (let k = 0; k < this.morphs.length; k++) this.weightData[4 * k] = w[k] || 0;
      this.weightTex.needsUpdate = true;
      if (this.written) { this.poseGpuSkin(); return; }
    }
    const cpuSkin = this.skinIndex && !this.gpuSkin;
    const active = [];
    if (!this.gpuMorphs) for (let k = 0; k < this.morphs.length; k++) if (w[k]) active.push(k);
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
      if (cpuSkin) {
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
    this.written = true;
    if (this.gpuSkin) this.poseGpuSkin();
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
