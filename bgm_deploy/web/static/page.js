/**
 * The page of a bgm-deploy web export: camera or image files as the source, the plate
 * captured from the camera or loaded, alpha / foreground / composites, RGBA download, the
 * backend that runs (and why another did not), fps and per-stage times.
 *
 * Everything model-related goes through the module `bgm.js`; this file is the UI.
 * `window.bgmPage` exposes the state for tests and the console.
 */
import {
  alphaImage, compositeImage, fitSize, loadModel, refineCells, rgbaImage,
} from './bgm.js';

const $ = (id) => document.getElementById(id);
const SAMPLE = 'samples/astronaut_coffee_640x480';

const state = {
  model: null,
  source: null, // HTMLVideoElement or HTMLImageElement
  plate: null, // HTMLCanvasElement holding the plate at its own size
  backdrop: null, // HTMLImageElement
  result: null,
  running: false, // the camera loop
  busy: false,
  fps: 0,
  lastFrameEnd: 0,
  frames: 0,
  errors: [],
};
window.bgmPage = state;

function banner(text, kind = '') {
  const element = $('banner');
  element.textContent = text;
  element.className = `banner ${kind}`;
}

function fail(error) {
  const message = String(error && error.message ? error.message : error);
  state.errors.push(message);
  banner(`Error: ${message}`, 'error');
}

async function load() {
  const backend = $('backend').value;
  if (state.model) {
    await state.model.release();
    state.model = null;
  }
  try {
    state.model = await loadModel('./model.onnx', {
      backend,
      warmup: { width: 128, height: 96 },
      onStatus: (message) => banner(message),
    });
  } catch (error) {
    fail(error);
    return;
  }
  const model = state.model;
  const skipped = model.fallbacks.map((f) => `${f.backend}: ${f.reason}`).join('; ');
  if (skipped) {
    banner(`Running on ${model.label} (fallback: ${skipped})`, 'fallback');
  } else {
    banner(`Running on ${model.label}`);
  }
  $('stat-backend').textContent = model.label + (skipped ? ' (fallback)' : '');
  $('stat-threads').textContent = model.backend === 'wasm'
    ? `${model.threads || 'auto'}${crossOriginIsolated ? '' : ' (page not cross-origin isolated: 1)'}`
    : '-';
  const config = model.config.model_config;
  $('model-info').textContent = `${config.backbone} ${config.model_type}, backbone scale ${config.backbone_scale}, `
    + `${config.refine_mode}, onnxruntime-web ${model.version}`;
  const refine = $('refine');
  if (model.refineAdjustable) {
    refine.disabled = false;
    // The range clamps a value over its max: raise the max first (refineBudget sets it per frame).
    refine.max = String(Math.max(Number(refine.max), model.defaultRefineK));
    refine.value = String(model.defaultRefineK);
  } else {
    refine.disabled = true;
    $('refine-value').textContent = config.model_type === 'refine'
      ? `fixed by the model (${config.refine_mode}); re-export to change it` : 'no refiner';
  }
  if (!state.source) await useSample();
  else await processOnce();
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load the image ${url}`));
    image.src = url;
  });
}

function fileImage(input) {
  const file = input.files && input.files[0];
  return file ? loadImage(URL.createObjectURL(file)) : Promise.resolve(null);
}

function toCanvas(image, width, height) {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').drawImage(image, 0, 0, width, height);
  return canvas;
}

function sourceSize(source) {
  return source instanceof HTMLVideoElement
    ? { width: source.videoWidth, height: source.videoHeight }
    : { width: source.naturalWidth, height: source.naturalHeight };
}

function pixels(image, width, height, filter = 'none') {
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.filter = filter;
  context.drawImage(image, 0, 0, width, height);
  return context.getImageData(0, 0, width, height);
}

function refineBudget(width, height) {
  const refine = $('refine');
  if (refine.disabled) return undefined;
  const cells = refineCells(width, height);
  refine.max = String(cells);
  const k = Math.min(Number(refine.value), cells);
  $('refine-value').textContent = `${k} cells (${k * 16} px, ${((100 * k) / cells).toFixed(0)}%)`;
  return k;
}

function render(result) {
  const mode = $('output').value;
  const { width, height } = result;
  let image;
  if (mode === 'alpha') image = alphaImage(result);
  else if (mode === 'foreground') image = rgbaImage(result);
  else if (mode === 'composite-image' && state.backdrop) {
    image = compositeImage(result, { image: pixels(state.backdrop, width, height) });
  } else if (mode === 'composite-blur') {
    image = compositeImage(result, { image: pixels(state.plate, width, height, `blur(${$('blur').value}px)`) });
  } else {
    const hex = $('color').value;
    const color = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    image = compositeImage(result, { color });
  }
  const out = $('out');
  out.width = width;
  out.height = height;
  out.getContext('2d').putImageData(image, 0, 0);
}

function ms(value) {
  return `${value.toFixed(1)} ms`;
}

async function processOnce() {
  if (!state.model || !state.source || !state.plate || state.busy) return;
  state.busy = true;
  try {
    const natural = sourceSize(state.source);
    const { width, height } = fitSize(natural.width, natural.height, Number($('size').value));
    const src = pixels(state.source, width, height);
    const bgr = pixels(state.plate, width, height);
    const result = await state.model.run(src, bgr, { refineK: refineBudget(width, height) });
    const t0 = performance.now();
    render(result);
    const post = performance.now() - t0;
    state.result = result;
    state.frames += 1;
    const now = performance.now();
    if (state.lastFrameEnd) {
      const fps = 1000 / (now - state.lastFrameEnd);
      state.fps = state.fps ? 0.8 * state.fps + 0.2 * fps : fps;
    }
    state.lastFrameEnd = state.running ? now : 0;
    $('stat-size').textContent = `${width}x${height}`;
    $('stat-fps').textContent = state.running ? state.fps.toFixed(1) : '- (single image)';
    $('stat-pre').textContent = ms(result.times.preprocess);
    $('stat-infer').textContent = ms(result.times.inference);
    $('stat-post').textContent = ms(post);
    const ref = result.outputs.ref_sm;
    $('stat-refined').textContent = ref ? String(ref.data.reduce((sum, v) => sum + (v > 0.5 ? 1 : 0), 0)) : '-';
    $('download').disabled = false;
  } catch (error) {
    fail(error);
    state.running = false;
  } finally {
    state.busy = false;
  }
}

async function cameraLoop() {
  while (state.running) {
    await processOnce();
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
}

async function startCamera() {
  const video = $('video');
  if (state.running) {
    state.running = false;
    video.srcObject.getTracks().forEach((track) => track.stop());
    $('camera').textContent = 'Start camera';
    $('capture-plate').disabled = true;
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: false });
    await video.play();
  } catch (error) {
    fail(`camera: ${error}`);
    return;
  }
  state.source = video;
  $('camera').textContent = 'Stop camera';
  $('capture-plate').disabled = false;
  if (!state.plate) banner('Step out of the picture and press "Capture from camera" to take the plate', 'fallback');
  state.running = true;
  state.lastFrameEnd = 0;
  cameraLoop();
}

function capturePlate() {
  const { width, height } = sourceSize(state.source);
  state.plate = toCanvas(state.source, width, height);
  if (state.model) banner(`Running on ${state.model.label}; plate captured`);
}

async function useSample() {
  const [src, bgr] = await Promise.all([loadImage(`${SAMPLE}/src.jpg`), loadImage(`${SAMPLE}/bgr.jpg`)]);
  state.source = src;
  state.plate = toCanvas(bgr, bgr.naturalWidth, bgr.naturalHeight);
  await processOnce();
}

function download() {
  if (!state.result) return;
  const image = rgbaImage(state.result);
  const canvas = document.createElement('canvas');
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext('2d').putImageData(image, 0, 0);
  canvas.toBlob((blob) => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = 'matte-rgba.png';
    link.click();
  }, 'image/png');
}

$('load').addEventListener('click', load);
$('camera').addEventListener('click', startCamera);
$('capture-plate').addEventListener('click', capturePlate);
$('sample').addEventListener('click', () => useSample().catch(fail));
$('src-file').addEventListener('change', async () => {
  const image = await fileImage($('src-file')).catch(fail);
  if (!image) return;
  state.source = image;
  processOnce();
});
$('bgr-file').addEventListener('change', async () => {
  const image = await fileImage($('bgr-file')).catch(fail);
  if (!image) return;
  state.plate = toCanvas(image, image.naturalWidth, image.naturalHeight);
  processOnce();
});
$('backdrop-file').addEventListener('change', async () => {
  state.backdrop = await fileImage($('backdrop-file')).catch(fail);
  $('output').value = 'composite-image';
  processOnce();
});
for (const id of ['output', 'color', 'blur', 'size', 'refine']) {
  $(id).addEventListener('input', () => { if (!state.running) processOnce(); });
}
$('download').addEventListener('click', download);

state.ready = load();
