// The tti playground: one form, the server's public API, nothing else.
// Every request goes to this page's own origin (relative URLs, so it also works
// behind a proxy that serves the model under a path prefix).
"use strict";

const TOKEN_KEY = "tti-playground-token";
const MAX_RUNS = 24;
const MAX_SEED = Number.MAX_SAFE_INTEGER; // the API takes up to 2^63-1; JS numbers stop here
const MAX_WAITS = 60; // 503 + Retry-After (loading, queue full): wait and retry this often
const PARTIAL_IMAGES = 3; // the most OpenAI's `partial_images` allows
const WORDS = {
  400: "The server refused the request",
  401: "The server wants an access token",
  403: "The token was refused",
  404: "Not found",
  406: "The server cannot produce that format",
  500: "The model failed",
  503: "The model is not ready or too busy",
  504: "The model took too long",
};

const $ = (id) => document.getElementById(id);
const state = { model: null, sideMultiple: 1, rules: null, rulesOf: null, runs: [], shown: null, busy: false, watch: 0 };

class ApiError extends Error {}

// Sizes: the model fits each side to the nearest multiple of its side_multiple (8 for SDXL,
// 16 for SD 3.5 and FLUX.1, 1 for the stub), ties to even, never 0: as the server does
// (generation.fitted_side).
function fitSide(pixels) {
  const m = state.sideMultiple;
  const q = pixels / m;
  const lower = Math.floor(q);
  const half = q - lower === 0.5;
  const nearest = half ? (lower % 2 === 0 ? lower : lower + 1) : Math.round(q);
  return Math.max(m, nearest * m);
}

function url(path) {
  return new URL(path, document.baseURI).href;
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function call(path, options = {}) {
  const headers = { ...options.headers, ...authHeaders() };
  return fetch(url(path), { ...options, headers });
}

async function errorText(response) {
  let details = response.statusText;
  try {
    details = (await response.json()).details || details;
  } catch {
    // not the server's JSON envelope (a proxy's page, say): keep the status text
  }
  const words = WORDS[response.status] || "The request failed";
  return `${words} (${response.status}): ${details}`;
}

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

// The header line: which model, and whether it is ready (polled until it is). A gateway
// lists every model it serves, each with its state: then a picker chooses among them.
const STATE_WORDS = {
  Ready: "ready",
  Starting: "starting: the first request waits for it",
  ScaledToZero: "scaled to zero: the first request wakes it (a cold start takes a while)",
};

async function watchModel() {
  clearTimeout(state.watch); // one poll at a time: a pick or a token looks at once
  try {
    const models = await call("v1/models");
    if (models.status === 401) return askForToken();
    if (!models.ok) throw new ApiError(await errorText(models));
    const list = (await models.json()).data;
    showPicker(list);
    const chosen = list.find((model) => model.id === state.model) || list[0];
    if (!chosen) throw new ApiError("no model is served here yet");
    state.model = chosen.id;
    const rules = chosen.rules || (await rulesFromInfo());
    state.sideMultiple = chosen.side_multiple || (rules && rules.side_multiple) || 1;
    if (state.rulesOf !== chosen.id) applyRules(rules, chosen.id);
    syncSize(false);
    const [ready, note] = chosen.state ? modelState(chosen) : await serverState();
    $("model").textContent = `Model ${state.model} · ${note}`;
    if (!ready || chosen.state) watchAgain(chosen.state ? 5 : 2);
  } catch (error) {
    $("model").textContent = `Cannot reach the model: ${error.message}`;
    watchAgain(5);
  }
}

function watchAgain(seconds) {
  state.watch = setTimeout(watchModel, seconds * 1000);
}

function showPicker(list) {
  const picker = $("model-picker");
  picker.replaceChildren(
    ...list.map((model) => el("option", { value: model.id }, model.state ? `${model.id} (${model.state})` : model.id)),
  );
  if (state.model) picker.value = state.model;
  $("picker-box").hidden = list.length < 2;
}

function pickModel() {
  state.model = $("model-picker").value;
  watchModel();
}

async function rulesFromInfo() {
  const info = await call("info/models");
  return info.ok ? (await info.json()).models[0].metadata.rules || null : null;
}

// The model's rules (the catalogue's: docs/models.md) set the controls' bounds and
// defaults once per model picked; a control the model has no use for is turned off.
function applyRules(rules, modelId) {
  state.rules = rules;
  state.rulesOf = modelId;
  if (!rules) return;
  const steps = $("steps");
  steps.max = rules.max_steps;
  steps.value = rules.default_steps;
  const guidance = $("guidance");
  const noGuidance = rules.max_guidance === 0;
  guidance.max = rules.max_guidance ?? 50;
  guidance.value = rules.default_guidance;
  guidance.disabled = noGuidance;
  guidance.title = noGuidance ? `${modelId} takes no guidance` : "";
  const negative = $("negative");
  negative.disabled = rules.negative_prompt === "refused";
  negative.placeholder = negative.disabled
    ? `${modelId} takes no negative prompt`
    : "optional: what to leave out";
  if (negative.disabled) negative.value = "";
  $("width").max = $("height").max = rules.max_side;
  // A model that denoises in several steps can show its picture forming; one step cannot.
  $("previews").checked = rules.default_steps > 1;
  setSize(rules.default_size);
}

function modelState(model) {
  return [model.state === "Ready", STATE_WORDS[model.state] || model.state];
}

async function serverState() {
  const ready = await call("readyz");
  return [ready.ok, ready.ok ? "ready" : `not ready: ${(await ready.json()).details}`];
}

function askForToken() {
  $("token-box").hidden = false;
  $("token").focus();
  $("model").textContent = "The server wants an access token.";
}

// A new token lists the models again with it (done when the promise settles).
function saveToken() {
  const token = $("token").value.trim();
  if (!token) return Promise.resolve();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-box").hidden = true;
  return watchModel();
}

// The form -> the request body, in the order it is sent and copied.
function wholeNumber(id, label, min, max = MAX_SEED) {
  const text = $(id).value.trim();
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new ApiError(`${label}: enter a whole number from ${min} to ${max}`);
  }
  return Number(text);
}

function newSeed() {
  const words = crypto.getRandomValues(new Uint32Array(1));
  $("seed").value = String(words[0]);
}

function readForm() {
  if (!$("keep-seed").checked || !$("seed").value.trim()) newSeed();
  const body = {};
  if (state.model) body.model = state.model;
  body.prompt = $("prompt").value;
  body.n = wholeNumber("count", "Images", 1, 10);
  body.size = `${wholeNumber("width", "Width", 0)}x${wholeNumber("height", "Height", 0)}`;
  body.seed = wholeNumber("seed", "Seed", 0);
  body.num_steps = wholeNumber("steps", "Steps", 1, state.rules ? state.rules.max_steps : MAX_SEED);
  if (!$("guidance").disabled) {
    const guidance = Number($("guidance").value);
    if ($("guidance").value.trim() === "" || Number.isNaN(guidance)) {
      throw new ApiError("Guidance: enter a number");
    }
    body.guidance_scale = guidance;
  }
  if (!$("negative").disabled && $("negative").value.trim()) body.negative_prompt = $("negative").value;
  if ($("format").value) body.output_format = $("format").value;
  return body;
}

// One generation: POST, waiting out 503s that say when to retry. A streamed answer's
// partial images go to `onPartial` as they come; the completed images are the answer.
async function post(json, onPartial) {
  for (let wait = 0; ; wait++) {
    const response = await call("v1/images/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: json,
    });
    if (response.ok) {
      const streamed = (response.headers.get("Content-Type") || "").startsWith("text/event-stream");
      return streamed ? readStream(response, onPartial) : response.json();
    }
    if (response.status === 401) {
      askForToken();
      throw new ApiError(`${await errorText(response)}. Enter it below, then generate again.`);
    }
    const retry = Number(response.headers.get("Retry-After"));
    if (response.status !== 503 || !retry || wait >= MAX_WAITS) {
      throw new ApiError(await errorText(response));
    }
    setStatus(`${await errorText(response)}; trying again in ${retry} s…`);
    await sleep(retry);
  }
}

// Server-sent events, read with fetch (EventSource cannot POST): blocks of `event:` and
// `data:` lines, a blank line after each.
async function readStream(response, onPartial) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const answer = { data: [], output_format: null, size: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      onEvent(parseEvent(buffer.slice(0, end)), answer, onPartial);
      buffer = buffer.slice(end + 2);
    }
  }
  if (!answer.data.length) throw new ApiError("The stream ended before the image came");
  return answer;
}

function parseEvent(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    const [name, ...rest] = line.split(":");
    const value = rest.join(":").replace(/^ /, "");
    if (name === "event") type = value;
    if (name === "data") data.push(value);
  }
  return { type, data: data.length ? JSON.parse(data.join("\n")) : {} };
}

function onEvent(event, answer, onPartial) {
  const data = event.data;
  if (event.type === "error") {
    const { code, message } = data.error || {};
    throw new ApiError(`${WORDS[code] || "The request failed"} (${code}): ${message}`);
  }
  if (event.type === "image_generation.partial_image") onPartial(data);
  if (event.type === "image_generation.completed") {
    answer.data[data.image_index ?? answer.data.length] = data;
    [answer.output_format, answer.size] = [data.output_format, data.size];
  }
}

// The picture forming: one figure per image, its latest partial image in it.
function showPartial(event, body, urls) {
  if (!urls.length) {
    const [width, height] = body.size.split("x");
    $("images").replaceChildren(
      ...Array.from({ length: body.n }, (_, i) =>
        el("figure", { className: "forming" }, el("img", { width, height, alt: `forming (seed ${body.seed + i})` }), el("figcaption", {}, "forming…")),
      ),
    );
    $("empty").hidden = true;
  }
  const img = $("images").children[event.image_index ?? 0].querySelector("img");
  const src = toBlobUrl(event.b64_json, event.output_format);
  urls.push(src);
  img.dataset.partial = String(event.partial_image_index);
  img.src = src;
  setStatus(`Forming… partial image ${event.partial_image_index + 1} of up to ${PARTIAL_IMAGES}`);
}

function toBlobUrl(b64, format) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: `image/${format}` }));
}

async function generate() {
  if (state.busy) return;
  showError("");
  setBusy(true);
  const previews = []; // blob URLs of the partial images, freed once the run ends
  try {
    // A token typed and sent with Enter: the models are listed with it first (behind a
    // gateway with auth, which model to ask for is only known then).
    await saveToken();
    const body = readForm();
    // What is copied and kept is the plain request: its images are the same bytes.
    const json = JSON.stringify(body);
    const streamed = $("previews").checked && body.num_steps > 1;
    const sent = streamed ? JSON.stringify({ ...body, stream: true, partial_images: PARTIAL_IMAGES }) : json;
    const started = performance.now();
    const answer = await post(sent, (event) => showPartial(event, body, previews));
    const seconds = (performance.now() - started) / 1000;
    const images = answer.data.map((item, i) => ({
      url: toBlobUrl(item.b64_json, answer.output_format),
      seed: body.seed + i,
    }));
    addRun({ body, json, seconds, images, size: answer.size, format: answer.output_format });
    setStatus(`${images.length} image${images.length > 1 ? "s" : ""} in ${seconds.toFixed(2)} s`);
  } catch (error) {
    setStatus("");
    showError(error instanceof ApiError ? error.message : `Cannot reach the server: ${error.message}`);
    if (previews.length) restoreShown();
  } finally {
    previews.forEach((src) => URL.revokeObjectURL(src));
    setBusy(false);
  }
}

// After a failed stream: the run shown before, or nothing.
function restoreShown() {
  if (state.shown) return showRun(state.shown);
  $("images").replaceChildren();
  $("empty").hidden = false;
}

function setBusy(busy) {
  state.busy = busy;
  $("generate").disabled = busy;
  $("generate").textContent = busy ? "Generating…" : "Generate";
  $("form").setAttribute("aria-busy", String(busy));
  if (busy) setStatus("Generating…");
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

// Results: the run shown, and the strip of this session's runs.
function addRun(run) {
  state.runs.unshift(run);
  for (const old of state.runs.splice(MAX_RUNS)) {
    old.images.forEach((image) => URL.revokeObjectURL(image.url));
  }
  showRun(run);
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function showRun(run) {
  state.shown = run;
  const [width, height] = run.size.split("x");
  $("images").replaceChildren(
    ...run.images.map((image) => {
      const img = el("img", { src: image.url, width, height, alt: `${run.body.prompt} (seed ${image.seed})` });
      const link = el("a", { href: image.url, download: `tti-${image.seed}.${run.format}` }, "Download");
      const caption = `${run.size} · seed ${image.seed} · ${run.seconds.toFixed(2)} s · `;
      return el("figure", {}, img, el("figcaption", {}, caption, link));
    }),
  );
  $("empty").hidden = true;
  $("copy").hidden = false;
  $("snippet").value = "";
  $("snippet-box").hidden = true;
  renderHistory();
}

function renderHistory() {
  $("history-title").hidden = $("history").hidden = state.runs.length < 2;
  $("history").replaceChildren(
    ...state.runs.map((run) => {
      const first = run.images[0];
      const label = `${run.body.prompt.slice(0, 40)} · seed ${first.seed}`;
      const button = el("button", { type: "button", title: run.body.prompt }, el("img", { src: first.url, alt: "" }), el("span", {}, label));
      if (run === state.shown) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => showRun(run));
      return el("li", {}, button);
    }),
  );
}

// "Copy as": the request just shown, exactly (a token is named, never copied).
const shellQuote = (text) => `'${text.replaceAll("'", `'\\''`)}'`;
const pyValue = (value) => JSON.stringify(value); // JSON strings and numbers are Python literals

function curlFor(run) {
  const lines = [`curl -s ${shellQuote(url("v1/images/generations"))}`];
  lines.push("-H 'Content-Type: application/json'");
  if (sessionStorage.getItem(TOKEN_KEY)) lines.push(`-H "Authorization: Bearer $TTI_TOKEN"`);
  lines.push(`-d ${shellQuote(run.json)}`);
  return lines.join(" \\\n  ") + "\n";
}

function pythonFor(run) {
  const { seed, num_steps, guidance_scale, negative_prompt, ...standard } = run.body;
  const extra = { seed, num_steps, guidance_scale };
  if (negative_prompt !== undefined) extra.negative_prompt = negative_prompt;
  const token = sessionStorage.getItem(TOKEN_KEY);
  const args = Object.entries(standard).map(([key, value]) => `    ${key}=${pyValue(value)},`);
  const extras = Object.entries(extra).map(([key, value]) => `${pyValue(key)}: ${pyValue(value)}`);
  return [
    "import base64",
    ...(token ? ["import os"] : []),
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${pyValue(url("v1"))}, api_key=${token ? 'os.environ["TTI_TOKEN"]' : '"unused"'})`,
    "result = client.images.generate(",
    ...args,
    `    extra_body={${extras.join(", ")}},`,
    ")",
    "for i, image in enumerate(result.data):",
    `    with open(f"tti-{${seed} + i}.${run.format}", "wb") as file:`,
    "        file.write(base64.b64decode(image.b64_json))",
    "",
  ].join("\n");
}

async function copy(text) {
  $("snippet-box").hidden = false;
  $("snippet").value = text;
  $("snippet").rows = text.split("\n").length;
  try {
    await navigator.clipboard.writeText(text);
    setStatus("Copied to the clipboard.");
  } catch {
    $("snippet").select(); // no clipboard (plain http off localhost): select it to copy by hand
    setStatus("Select the text below and copy it.");
  }
}

function setSize(pixels) {
  [$("width").value, $("height").value] = [pixels, pixels];
  syncSize(false);
}

// Size: presets fill width and height; the hint shows what the model will use.
function syncSize(fromPreset) {
  if (fromPreset && $("preset").value !== "custom") {
    [$("width").value, $("height").value] = $("preset").value.split("x");
  }
  const [width, height] = [Number($("width").value), Number($("height").value)];
  const preset = `${width}x${height}`;
  const known = [...$("preset").options].some((option) => option.value === preset);
  $("preset").value = known ? preset : "custom";
  const rounded = [fitSide(width), fitSide(height)];
  const changed = width > 0 && height > 0 && (rounded[0] !== width || rounded[1] !== height);
  $("size-hint").textContent = changed
    ? `The model will use ${rounded[0]} × ${rounded[1]} (sides round to multiples of ${state.sideMultiple}).`
    : "";
}

function init() {
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  $("prompt").addEventListener("keydown", (event) => {
    const plain = !(event.shiftKey || event.ctrlKey || event.altKey || event.metaKey);
    if (event.key === "Enter" && plain && !event.isComposing) {
      event.preventDefault();
      $("form").requestSubmit();
    }
  });
  $("preset").addEventListener("change", () => syncSize(true));
  $("width").addEventListener("input", () => syncSize(false));
  $("height").addEventListener("input", () => syncSize(false));
  $("dice").addEventListener("click", newSeed);
  $("seed").addEventListener("input", () => ($("keep-seed").checked = true));
  $("save-token").addEventListener("click", saveToken);
  $("model-picker").addEventListener("change", pickModel);
  $("copy-curl").addEventListener("click", () => copy(curlFor(state.shown)));
  $("copy-python").addEventListener("click", () => copy(pythonFor(state.shown)));
  syncSize(false);
  newSeed();
  watchModel();
}

init();
