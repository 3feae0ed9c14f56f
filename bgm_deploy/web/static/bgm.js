/**
 * bgm.js: BackgroundMattingV2 in the browser with onnxruntime-web.
 *
 * The module of a site written by `bgm-deploy export --format web`. It loads the site's
 * model (`model.onnx`, its config in `model.json`) on an execution backend, mattes a frame
 * pair (a source with the subject and a plate of the same background) and turns the raw
 * outputs into images. It needs no bundler and no network: onnxruntime-web's files are in
 * `./ort/` next to it, at the version the export pinned.
 *
 *     import { loadModel } from './bgm.js';
 *     const model = await loadModel('./model.onnx', { backend: 'auto' });
 *     console.log(model.backend, model.fallbacks);          // what runs, and why not the others
 *     const result = await model.run(srcImageData, bgrImageData);
 *     const alpha = alphaImage(result);                      // ImageData
 *
 * Backends (see docs/web.md):
 *  - `webgpu`: onnxruntime-web's default bundle, WebGPU through its JavaScript kernels (JSEP);
 *  - `webgpu-native`: the `onnxruntime-web/webgpu` bundle, onnxruntime's native WebGPU
 *    execution provider (needs the export's zero-padded convolutions, onnxruntime #29651);
 *  - `wasm`: the CPU, WebAssembly with SIMD, multi-threaded when the page is
 *    cross-origin isolated (`bgm-deploy web` serves it so).
 * `auto` tries WebGPU, then WASM, and records every backend it skipped with the reason in
 * `model.fallbacks`: a fallback is never silent.
 *
 * @module bgm
 */

/**
 * @typedef {'webgpu' | 'webgpu-native' | 'wasm'} Backend
 */

/**
 * An image as a canvas gives it: RGBA bytes, row-major.
 * @typedef {{data: Uint8ClampedArray | Uint8Array, width: number, height: number}} RGBAImage
 */

/**
 * One output tensor of the model.
 * @typedef {{data: Float32Array, dims: number[]}} OutputTensor
 */

/**
 * What {@link Matter#run} returns.
 * @typedef {Object} MatteResult
 * @property {number} width - frame width (pixels).
 * @property {number} height - frame height (pixels).
 * @property {Object<string, OutputTensor>} outputs - the model's raw outputs by name:
 *   `pha` (1x1xHxW, 0..1), `fgr` (1x3xHxW, 0..1), and for MattingRefine `pha_sm`, `fgr_sm`,
 *   `err_sm` (coarse), `ref_sm` (1x1xH/4xW/4, 1 where a 4x4 patch was refined).
 * @property {{preprocess: number, inference: number}} times - milliseconds per stage.
 * @property {number | null} refineK - the refine budget used, in 4x4 cells (null: fixed by the model).
 */

/** The backends, with the onnxruntime-web bundle each loads (relative to this module). */
export const BACKENDS = Object.freeze({
  webgpu: Object.freeze({ bundle: './ort/ort.min.mjs', provider: 'webgpu', gpu: true,
    label: 'WebGPU (onnxruntime-web JSEP kernels)' }),
  'webgpu-native': Object.freeze({ bundle: './ort/ort.webgpu.min.mjs', provider: 'webgpu', gpu: true,
    label: 'WebGPU (native execution provider)' }),
  wasm: Object.freeze({ bundle: './ort/ort.min.mjs', provider: 'wasm', gpu: false,
    label: 'WASM (CPU, SIMD)' }),
});

/** The order `backend: 'auto'` tries. */
export const AUTO_ORDER = Object.freeze(['webgpu', 'wasm']);

/** The int64 input of a web-exported sampling model that sets the refine budget (4x4 cells). */
export const REFINE_K_INPUT = 'refine_k';

const runtimes = new Map();

/**
 * Imports an onnxruntime-web bundle once and points it at this site's WASM files.
 * @param {Backend} backend
 * @param {number} threads - WASM threads (1 when the page is not cross-origin isolated).
 * @returns {Promise<any>} the `ort` namespace.
 */
async function runtimeFor(backend, threads) {
  const { bundle } = BACKENDS[backend];
  if (!runtimes.has(bundle)) {
    runtimes.set(bundle, import(new URL(bundle, import.meta.url).href));
  }
  const ort = await runtimes.get(bundle);
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  ort.env.logLevel = 'error';
  return ort;
}

/**
 * The WASM thread count to use: `requested`, capped by what the page allows.
 * Threads need `SharedArrayBuffer`, i.e. a cross-origin isolated page.
 * @param {number | undefined} requested - undefined: onnxruntime-web's own choice (0).
 * @returns {number}
 */
export function wasmThreads(requested) {
  if (!globalThis.crossOriginIsolated) return 1;
  return requested === undefined ? 0 : Math.max(1, Math.floor(requested));
}

/**
 * Why WebGPU cannot run here, or null when an adapter is available.
 * @returns {Promise<string | null>}
 */
export async function webgpuUnavailable() {
  if (!globalThis.navigator || !navigator.gpu) return 'this browser has no WebGPU (navigator.gpu is undefined)';
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? null : 'no WebGPU adapter (requestAdapter() returned null)';
  } catch (error) {
    return `requestAdapter() failed: ${error}`;
  }
}

/**
 * Loads a web-exported model on the first backend that works.
 *
 * @param {string} [modelUrl='./model.onnx'] - the model; its config is read from the
 *   `model.json` next to it (written by the export).
 * @param {Object} [options]
 * @param {Backend | 'auto'} [options.backend='auto'] - a backend, or `auto` (WebGPU, then WASM).
 * @param {number} [options.threads] - WASM threads (default: onnxruntime-web's choice; 1
 *   when the page is not cross-origin isolated).
 * @param {{width: number, height: number} | null} [options.warmup=null] - run once on a
 *   blank frame of this size while loading, so that a backend that loads but cannot run
 *   falls back too (and the first real frame is not slow).
 * @param {(message: string) => void} [options.onStatus] - progress messages.
 * @returns {Promise<Matter>}
 * @throws {Error} when no backend works (the message lists each backend's reason).
 */
export async function loadModel(modelUrl = './model.onnx', options = {}) {
  const { backend = 'auto', threads, warmup = null, onStatus = () => {} } = options;
  const order = backend === 'auto' ? AUTO_ORDER : [backend];
  for (const name of order) {
    if (!(name in BACKENDS)) {
      throw new Error(`backend '${name}' is not valid; valid: auto, ${Object.keys(BACKENDS).join(', ')}`);
    }
  }
  const absolute = new URL(modelUrl, globalThis.location ? location.href : import.meta.url);
  onStatus(`downloading ${absolute.pathname} ...`);
  const [bytes, config] = await Promise.all([
    fetchBytes(absolute.href),
    fetchJson(new URL(absolute.pathname.replace(/\.onnx$/, '') + '.json', absolute).href),
  ]);
  const fallbacks = [];
  for (const name of order) {
    const spec = BACKENDS[name];
    try {
      if (spec.gpu) {
        const reason = await webgpuUnavailable();
        if (reason) throw new Error(reason);
      }
      onStatus(`starting ${spec.label} ...`);
      const used = wasmThreads(threads);
      const ort = await runtimeFor(name, used);
      const session = await ort.InferenceSession.create(bytes, {
        executionProviders: [spec.provider],
        graphOptimizationLevel: 'all',
        // onnxruntime's own warnings (nodes placed on the CPU by design) would reach the
        // console as errors through Emscripten's stderr; errors still do.
        logSeverityLevel: 3,
      });
      const matter = new Matter(ort, session, name, config, fallbacks, used);
      if (warmup) {
        onStatus(`warming up ${spec.label} at ${warmup.width}x${warmup.height} ...`);
        const blank = { data: new Uint8ClampedArray(warmup.width * warmup.height * 4), ...warmup };
        await matter.run(blank, blank);
      }
      onStatus(`running on ${spec.label}`);
      return matter;
    } catch (error) {
      fallbacks.push({ backend: name, reason: String(error && error.message ? error.message : error) });
      onStatus(`${spec.label} is not usable: ${fallbacks.at(-1).reason}`);
    }
  }
  throw new Error('no backend could run the model: ' + fallbacks.map((f) => `${f.backend}: ${f.reason}`).join('; '));
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} (the model's config, written by the export)`);
  return response.json();
}

/** A loaded model on one backend. Create it with {@link loadModel}. */
export class Matter {
  /**
   * @param {any} ort - the onnxruntime-web namespace.
   * @param {any} session - its InferenceSession.
   * @param {Backend} backend - what runs.
   * @param {Object} config - `model.json`: `model_config` and `export` of the file.
   * @param {{backend: string, reason: string}[]} fallbacks - backends tried first, and why they failed.
   * @param {number} threads - WASM threads (0: onnxruntime-web's choice).
   */
  constructor(ort, session, backend, config, fallbacks, threads) {
    /** @type {Backend} */
    this.backend = backend;
    /** Human-readable name of the backend. */
    this.label = BACKENDS[backend].label;
    /** @type {{backend: string, reason: string}[]} */
    this.fallbacks = fallbacks;
    /** The export's config (`model_config`, `export`). */
    this.config = config;
    /** WASM threads asked for (0: onnxruntime-web's choice, which is min(4, cores/2)). */
    this.threads = threads;
    /** onnxruntime-web's version. */
    this.version = ort.env.versions ? ort.env.versions.web || ort.env.versions.common : '';
    this.ort = ort;
    this.session = session;
    const web = (config.export && config.export.web) || {};
    /** Default refine budget in 4x4 cells, or null when the model's budget is fixed. */
    this.defaultRefineK = session.inputNames.includes(REFINE_K_INPUT) ? web.refine_k_default : null;
    /** Output names, in the model's order. */
    this.outputNames = [...session.outputNames];
  }

  /** True when {@link Matter#run} takes a `refineK`. */
  get refineAdjustable() {
    return this.defaultRefineK !== null && this.defaultRefineK !== undefined;
  }

  /**
   * Mattes one frame pair.
   * @param {RGBAImage} src - the frame with the subject.
   * @param {RGBAImage} bgr - the plate: the same background without the subject, same size.
   * @param {{refineK?: number}} [options] - refine budget in 4x4 cells (models with a
   *   `refine_k` input; default: the export's budget).
   * @returns {Promise<MatteResult>}
   * @throws {Error} sizes differ or are not multiples of 4 (MattingRefine).
   */
  async run(src, bgr, options = {}) {
    const { width, height } = src;
    if (bgr.width !== width || bgr.height !== height) {
      throw new Error(`src is ${width}x${height} but bgr is ${bgr.width}x${bgr.height}; they must have the same size`);
    }
    if (this.config.model_config.model_type === 'refine' && (width % 4 || height % 4)) {
      throw new Error(`${width}x${height}: width and height must be multiples of 4 (see fitSize)`);
    }
    const t0 = performance.now();
    const feeds = {
      src: new this.ort.Tensor('float32', rgbaToPlanar(src), [1, 3, height, width]),
      bgr: new this.ort.Tensor('float32', rgbaToPlanar(bgr), [1, 3, height, width]),
    };
    let refineK = null;
    if (this.refineAdjustable) {
      refineK = Math.max(1, Math.round(options.refineK ?? this.defaultRefineK));
      feeds[REFINE_K_INPUT] = new this.ort.Tensor('int64', BigInt64Array.of(BigInt(refineK)), [1]);
    }
    const t1 = performance.now();
    const results = await this.session.run(feeds);
    const t2 = performance.now();
    const outputs = {};
    for (const name of this.outputNames) {
      const tensor = results[name];
      outputs[name] = { data: tensor.data, dims: [...tensor.dims] };
      if (tensor.dispose) tensor.dispose();
    }
    return { width, height, outputs, times: { preprocess: t1 - t0, inference: t2 - t1 }, refineK };
  }

  /** Frees the session (and its GPU buffers). */
  async release() {
    await this.session.release();
  }
}

/**
 * RGBA bytes to a planar float32 RGB tensor in 0..1 (what the model takes: 1x3xHxW).
 * @param {RGBAImage} image
 * @returns {Float32Array}
 */
export function rgbaToPlanar(image) {
  const { data, width, height } = image;
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  for (let i = 0, p = 0; p < plane; p += 1, i += 4) {
    out[p] = data[i] / 255;
    out[plane + p] = data[i + 1] / 255;
    out[2 * plane + p] = data[i + 2] / 255;
  }
  return out;
}

/**
 * The largest size with the aspect ratio of `width` x `height` whose longer side is at most
 * `maxSide` and whose sides are multiples of 4 (what MattingRefine takes).
 * @param {number} width
 * @param {number} height
 * @param {number} maxSide
 * @returns {{width: number, height: number}}
 */
export function fitSize(width, height, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(width, height));
  const round4 = (value) => Math.max(4, Math.floor((value * scale) / 4) * 4);
  return { width: round4(width), height: round4(height) };
}

/**
 * Refinable 4x4 cells of a frame: the upper bound of the refine budget.
 * @param {number} width
 * @param {number} height
 * @returns {number}
 */
export function refineCells(width, height) {
  return Math.floor(width / 4) * Math.floor(height / 4);
}

function byte(value) {
  return value <= 0 ? 0 : value >= 1 ? 255 : Math.round(value * 255);
}

/**
 * The alpha matte as a grey image.
 * @param {MatteResult} result
 * @returns {ImageData}
 */
export function alphaImage(result) {
  const { width, height } = result;
  const pha = result.outputs.pha.data;
  const out = new ImageData(width, height);
  for (let p = 0, i = 0; p < width * height; p += 1, i += 4) {
    const v = byte(pha[p]);
    out.data[i] = v; out.data[i + 1] = v; out.data[i + 2] = v; out.data[i + 3] = 255;
  }
  return out;
}

/**
 * The foreground with the matte as its alpha channel (what the RGBA download holds).
 * @param {MatteResult} result
 * @returns {ImageData}
 */
export function rgbaImage(result) {
  const { width, height } = result;
  const plane = width * height;
  const pha = result.outputs.pha.data;
  const fgr = result.outputs.fgr.data;
  const out = new ImageData(width, height);
  for (let p = 0, i = 0; p < plane; p += 1, i += 4) {
    out.data[i] = byte(fgr[p]);
    out.data[i + 1] = byte(fgr[plane + p]);
    out.data[i + 2] = byte(fgr[2 * plane + p]);
    out.data[i + 3] = byte(pha[p]);
  }
  return out;
}

/**
 * The foreground composited over a backdrop: `fgr * pha + backdrop * (1 - pha)`.
 * @param {MatteResult} result
 * @param {{color?: [number, number, number], image?: RGBAImage}} backdrop - a colour
 *   (0..255 RGB) or an image of the frame's size.
 * @returns {ImageData}
 */
export function compositeImage(result, backdrop) {
  const { width, height } = result;
  const plane = width * height;
  const pha = result.outputs.pha.data;
  const fgr = result.outputs.fgr.data;
  const out = new ImageData(width, height);
  const image = backdrop.image ? backdrop.image.data : null;
  const [r, g, b] = backdrop.color || [0, 0, 0];
  for (let p = 0, i = 0; p < plane; p += 1, i += 4) {
    const a = Math.min(1, Math.max(0, pha[p]));
    const br = image ? image[i] / 255 : r / 255;
    const bg = image ? image[i + 1] / 255 : g / 255;
    const bb = image ? image[i + 2] / 255 : b / 255;
    out.data[i] = byte(fgr[p] * a + br * (1 - a));
    out.data[i + 1] = byte(fgr[plane + p] * a + bg * (1 - a));
    out.data[i + 2] = byte(fgr[2 * plane + p] * a + bb * (1 - a));
    out.data[i + 3] = 255;
  }
  return out;
}
