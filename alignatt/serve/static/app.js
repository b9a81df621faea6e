// The page: a talk from the microphone or a wav file goes to the server as 16 kHz 16-bit PCM frames over a
// WebSocket (simulstream's protocol); the text comes back unit by unit and is only ever appended to.

const FRAME_S = 0.1;  // audio per message
const RATE_HZ = 16000;
const ATTACHING = [",", ".", ";", ":", "!", "?", ")"];  // join the unit before them when they come on their own
// CJK characters (as alignatt.text_units counts them): in Chinese a space only between two runs of other characters.
const CJK = /[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]/;

const $ = (id) => document.getElementById(id);
const talk = { ws: null, units: [], openUnits: 0, charLevel: false, lags: [], stopCapture: null };

function joinUnits(units, charLevel) {
  let text = "";
  units.forEach((unit, i) => {
    const previous = i > 0 ? units[i - 1] : "";
    const spaced = i > 0 && !ATTACHING.includes(unit[0]) &&
      (!charLevel || (!CJK.test(previous.slice(-1)) && !CJK.test(unit[0])));
    text += spaced ? " " + unit : unit;
  });
  return text;
}

function render() {
  const closed = joinUnits(talk.units.slice(0, talk.units.length - talk.openUnits), talk.charLevel);
  const whole = joinUnits(talk.units, talk.charLevel);
  $("closed").textContent = closed;
  $("open").textContent = whole.slice(closed.length);
}

function setState(text, error = false) {
  $("state").textContent = text;
  $("state").classList.toggle("error", error);
}

function showLatency(lagS) {
  talk.lags.push(lagS);
  const mean = talk.lags.reduce((a, b) => a + b, 0) / talk.lags.length;
  $("latency").textContent = `behind the speaker: ${lagS.toFixed(1)} s now, ${mean.toFixed(1)} s on average`;
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.error) {
    setState(`${message.error}: ${message.message}`, true);
  } else if (message.session) {
    $("session").textContent = `session ${message.session.id}, en→${message.session.target_lang}, ` +
      `${message.session.preset} latency`;
  } else if (message.end_of_processing) {
    setState("done");
    finishTalk();
  } else if ("new" in message) {
    talk.units.push(...(message.units || []));
    talk.openUnits = message.open_units || 0;
    if (message.heard !== undefined) $("heard").textContent = message.heard;
    if (message.final) $("heard").textContent = "";
    if (!message.final && typeof message.lag_s === "number") showLatency(message.lag_s);
    render();
  }
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = new URLSearchParams(location.search).get("token");
  return `${scheme}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect(sampleRateHz) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(socketUrl());
    ws.binaryType = "arraybuffer";
    ws.onmessage = onMessage;
    ws.onerror = () => reject(new Error("could not reach the server"));
    ws.onclose = (event) => {
      if (event.code !== 1000 && event.code !== 1005) setState(`closed: ${event.reason || event.code}`, true);
      finishTalk();
    };
    ws.onopen = () => {
      const language = $("language").value;
      ws.send(JSON.stringify({ sample_rate: sampleRateHz, target_lang: language, preset: $("preset").value,
                               metrics_metadata: { wav_name: `browser-${Date.now()}` } }));
      resolve(ws);
    };
  });
}

function startTalk(ws) {
  Object.assign(talk, { ws, units: [], openUnits: 0, lags: [], charLevel: $("language").value === "zh" });
  render();
  $("heard").textContent = "";
  $("latency").textContent = "";
  setTalking(true);
}

function setTalking(talking) {
  $("mic").disabled = talking;
  $("file").disabled = talking;
  $("stop").disabled = !talking;
}

function stopCapturing() {
  if (talk.stopCapture) talk.stopCapture();
  talk.stopCapture = null;
}

function finishTalk() {
  stopCapturing();
  setTalking(false);
}

function endOfStream() {
  stopCapturing();
  if (talk.ws && talk.ws.readyState === WebSocket.OPEN) {
    talk.ws.send(JSON.stringify({ end_of_stream: true }));
    setState("finishing the last sentence…");
  }
  $("stop").disabled = true;
}

function audioContext() {
  // At 16 kHz the browser resamples the microphone itself; where it cannot, the native rate is declared and the
  // server resamples.
  try {
    return new AudioContext({ sampleRate: RATE_HZ });
  } catch (error) {
    return new AudioContext();
  }
}

async function startMicrophone() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    const context = audioContext();
    await context.audioWorklet.addModule("/static/capture.js");
    const node = new AudioWorkletNode(context, "pcm-capture",
      { processorOptions: { frameSamples: Math.round(context.sampleRate * FRAME_S) } });
    const ws = await connect(context.sampleRate);
    startTalk(ws);
    node.port.onmessage = (event) => { if (ws.readyState === WebSocket.OPEN) ws.send(event.data); };
    context.createMediaStreamSource(stream).connect(node);
    node.connect(context.destination);  // the graph pulls only nodes that reach the destination; the node is silent
    talk.stopCapture = () => { stream.getTracks().forEach((track) => track.stop()); context.close(); };
    setState(`listening (${context.sampleRate} Hz)`);
  } catch (error) {
    setState(`microphone: ${error.message} (browsers allow it on https:// pages and on localhost)`, true);
  }
}

async function decodeMono16k(file) {
  const bytes = await file.arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, RATE_HZ).decodeAudioData(bytes);  // resampled to 16 kHz
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    decoded.getChannelData(c).forEach((sample, i) => { mono[i] += sample / decoded.numberOfChannels; });
  }
  return { mono, decoded };
}

function toPcm16(samples) {
  const pcm = new Int16Array(samples.length);
  samples.forEach((sample, i) => { pcm[i] = Math.round(Math.max(-1, Math.min(1, sample)) * 32767); });
  return pcm.buffer;
}

async function playFile(file) {
  try {
    const { mono, decoded } = await decodeMono16k(file);
    const ws = await connect(RATE_HZ);
    startTalk(ws);
    const frame = Math.round(RATE_HZ * FRAME_S);
    const started = performance.now();
    let player = null;
    if ($("hear").checked) {
      player = new AudioContext();
      const source = player.createBufferSource();
      source.buffer = decoded;
      source.connect(player.destination);
      source.start();
    }
    let stopped = false;
    talk.stopCapture = () => { stopped = true; if (player) player.close(); };
    setState(`playing ${file.name} (${(mono.length / RATE_HZ).toFixed(1)} s)`);
    for (let offset = 0; offset < mono.length && !stopped; offset += frame) {
      const due = started + ((offset + frame) / RATE_HZ) * 1000;  // real time: a frame once it has been "spoken"
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, due - performance.now())));
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(toPcm16(mono.subarray(offset, offset + frame)));
    }
    endOfStream();
  } catch (error) {
    setState(`file: ${error.message}`, true);
  }
}

function fill(select, values, chosen) {
  select.replaceChildren(...values.map((value) => new Option(value, value, false, value === chosen)));
}

async function init() {
  const config = await (await fetch("/config.json")).json();
  fill($("language"), config.languages, config.defaults.target_lang);
  fill($("preset"), config.presets, config.defaults.preset);
  $("mic").onclick = startMicrophone;
  $("stop").onclick = endOfStream;
  $("file").onchange = (event) => {
    const chosen = event.target.files[0];
    event.target.value = "";  // choosing the same file again starts it again
    if (chosen) playFile(chosen);
  };
  setState("ready");
}

init();
