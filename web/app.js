// The call page's UI: a join form, the call controls, one tile per participant.
// All protocol work is in prism.js; this file only turns its events into DOM.
//
// URL parameters: ?channel=lobby&user=alice&device=laptop&join=1 (join at once);
// a production session token can be passed as #token=… (never sent to the server
// in the URL: fragments stay in the browser).

import { PrismClient, devSessionToken } from "./prism.js";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");

let client = null;
let localStream = null;
const ui = { mic: false, cam: false, screen: false, deafened: false };
const layers = new Map(); // track_id → layer received ("q" | "h" | "f" | null)

// -------------------------------------------------------------------------------------
// Joining and leaving

function setStatus(text) {
  $("#status").textContent = text;
}

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  const list = $("#log");
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
}

async function join({ channel, user, token, device }) {
  const baseUrl = location.origin;
  client = new PrismClient({
    baseUrl,
    channelId: channel,
    deviceId: device,
    sessionToken: async () => {
      if (token) return token;
      try {
        return await devSessionToken(baseUrl, user, channel);
      } catch (err) {
        if (err.code !== "not_found") throw err;
        // Production mode: no dev endpoint. The token comes from the operator's identity service.
        $("#join details").open = true;
        throw new Error("this server needs a session token: paste one under “Session token”");
      }
    },
  });
  window.prismCall.client = client;
  wire(client);
  setStatus("joining…");
  try {
    await client.join();
  } catch (err) {
    setStatus(`join failed: ${err.message}`);
    client = null;
    return;
  }
  $("#join").hidden = true;
  $("#controls").hidden = false;
  addSelfTile();
  await startMedia();
}

/** Microphone and camera at 1280x720 (so the camera's three simulcast layers are sent). */
async function startMedia() {
  const perms = new Set(client.self.permissions);
  const want = {
    audio: perms.has("speak"),
    video: perms.has("video") ? { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } } : false,
  };
  if (!want.audio && !want.video) return;
  try {
    localStream = await navigator.mediaDevices.getUserMedia(want);
  } catch (err) {
    // No camera (or it was refused): try the microphone alone.
    log(`camera/microphone: ${err.message}`);
    if (!want.audio) return;
    try {
      localStream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err2) {
      log(`microphone: ${err2.message}`);
      return;
    }
  }
  $("#self video").srcObject = localStream;
  const audio = localStream.getAudioTracks()[0];
  const video = localStream.getVideoTracks()[0];
  await Promise.all([
    audio && client.publish("microphone", audio),
    video && client.publish("camera", video),
  ]);
}

async function leave() {
  await client?.leave();
}

function resetPage() {
  client = null;
  localStream = null;
  layers.clear();
  Object.assign(ui, { mic: false, cam: false, screen: false, deafened: false });
  for (const id of ["mic", "cam", "screen", "deafen"]) $(`#${id}`).setAttribute("aria-pressed", "false");
  $("#tiles").replaceChildren();
  $("#controls").hidden = true;
  $("#join").hidden = false;
}

// -------------------------------------------------------------------------------------
// Client events → tiles

function wire(c) {
  c.addEventListener("state", (e) => {
    const { state, reason } = e.detail;
    setStatus(state === "joined" ? `in ${c.channelId} as ${c.self.user_uid}` : reason ? `${state}: ${reason}` : state);
    log(`state ${state}${reason ? ` (${reason})` : ""}`);
    if (state === "closed") resetPage();
  });
  c.addEventListener("participants", (e) => renderRoster(e.detail.participants));
  c.addEventListener("remotetrack", (e) => attachTrack(e.detail));
  c.addEventListener("remotetrackended", (e) => detachTrack(e.detail.trackId));
  c.addEventListener("speaking", (e) => {
    tileOf(e.detail.session_id)?.classList.toggle("speaking", e.detail.speaking);
  });
  c.addEventListener("layer", (e) => {
    layers.set(e.detail.track_id, e.detail.layer);
    const el = document.querySelector(`figure[data-track-id="${CSS.escape(e.detail.track_id)}"] .layer`);
    if (el) el.textContent = e.detail.layer ?? "paused";
  });
  c.addEventListener("mediastate", (e) => {
    const t = tileOf(e.detail.session_id);
    if (t) updateFlags(t, e.detail);
  });
  c.addEventListener("error", (e) => log(`error ${e.detail.code}: ${e.detail.message}`));
  c.addEventListener("event", (e) => {
    const { type } = e.detail;
    window.prismCall.eventCounts[type] = (window.prismCall.eventCounts[type] ?? 0) + 1;
    if (type !== "rtc.speaking" && type !== "rtc.ice.candidate") log(type);
  });
}

function tileOf(sessionId) {
  return document.querySelector(`.tile[data-session-id="${CSS.escape(sessionId)}"]`);
}

function addSelfTile() {
  const t = document.createElement("section");
  t.className = "tile self";
  t.id = "self";
  t.dataset.sessionId = client.self.session_id;
  t.innerHTML = `<div class="videos"><figure><video autoplay playsinline muted></video></figure></div>
    <div class="name"><span class="uid"></span> (you) <span class="flags"></span></div>`;
  t.querySelector(".uid").textContent = client.self.user_uid;
  $("#tiles").prepend(t);
}

/** One tile per remote participant; removed when they leave. */
function renderRoster(participants) {
  const tiles = $("#tiles");
  for (const t of tiles.querySelectorAll(".tile.remote")) {
    if (!participants.has(t.dataset.sessionId)) t.remove();
  }
  for (const [sessionId, p] of participants) {
    let t = tileOf(sessionId);
    if (!t) {
      t = document.createElement("section");
      t.className = "tile remote";
      t.dataset.sessionId = sessionId;
      t.dataset.userUid = p.user_uid;
      t.innerHTML = `<div class="videos"></div><div class="audios"></div>
        <div class="name"><span class="uid"></span> <span class="flags"></span></div>`;
      t.querySelector(".uid").textContent = p.user_uid;
      tiles.append(t);
    }
    updateFlags(t, p.media_state);
  }
}

function updateFlags(tile, s) {
  const flags = [];
  if (s.audio_muted) flags.push("muted");
  if (s.video_muted) flags.push("video off");
  if (s.deafened) flags.push("deafened");
  tile.querySelector(".flags").textContent = flags.join(" · ");
}

function attachTrack({ trackId, track, info }) {
  const tile = info && tileOf(info.session_id);
  if (!tile) return;
  detachTrack(trackId);
  const stream = new MediaStream([track]);
  if (track.kind === "audio") {
    // Remote audio must play through an element, or Chromium never decodes it.
    const a = document.createElement("audio");
    a.autoplay = true;
    a.dataset.trackId = trackId;
    a.muted = ui.deafened;
    a.srcObject = stream;
    tile.querySelector(".audios").append(a);
    a.play().catch(() => {});
    return;
  }
  const fig = document.createElement("figure");
  fig.dataset.trackId = trackId;
  fig.dataset.source = info.source;
  fig.innerHTML = `<video autoplay playsinline muted></video>
    <figcaption><span class="source"></span> · layer <span class="layer">–</span> · <span class="res"></span>
    <select aria-label="quality"><option value="f">high</option><option value="h">medium</option><option value="q">low</option></select></figcaption>`;
  fig.querySelector(".source").textContent = info.source;
  if (layers.has(trackId)) fig.querySelector(".layer").textContent = layers.get(trackId) ?? "paused";
  if (info.simulcast.length === 0) fig.querySelector("select").hidden = true;
  fig.querySelector("select").addEventListener("change", (e) => {
    client.updateSubscription(trackId, { maxLayer: e.target.value }).catch((err) => log(`quality: ${err.message}`));
  });
  const v = fig.querySelector("video");
  v.srcObject = stream;
  v.play().catch(() => {});
  // Screen shares first: they are what people look at.
  const videos = tile.querySelector(".videos");
  if (info.source === "screen") videos.prepend(fig);
  else videos.append(fig);
}

function detachTrack(trackId) {
  for (const el of document.querySelectorAll(`[data-track-id="${CSS.escape(trackId)}"]`)) {
    if (el.closest("#self")) continue;
    el.remove();
  }
}

// -------------------------------------------------------------------------------------
// Controls

async function toggleMic() {
  ui.mic = !ui.mic;
  for (const t of localStream?.getAudioTracks() ?? []) t.enabled = !ui.mic;
  $("#mic").setAttribute("aria-pressed", String(ui.mic));
  $("#mic").textContent = ui.mic ? "Unmute" : "Mute";
  await client.setMediaState({ audio_muted: ui.mic });
}

async function toggleCam() {
  ui.cam = !ui.cam;
  for (const t of localStream?.getVideoTracks() ?? []) t.enabled = !ui.cam;
  $("#cam").setAttribute("aria-pressed", String(ui.cam));
  $("#cam").textContent = ui.cam ? "Start video" : "Stop video";
  await client.setMediaState({ video_muted: ui.cam });
}

async function toggleScreen() {
  if (ui.screen) {
    await stopScreen();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
  } catch (err) {
    log(`screen share: ${err.message}`);
    return;
  }
  const track = stream.getVideoTracks()[0];
  track.addEventListener("ended", () => stopScreen()); // the browser's own "Stop sharing"
  ui.screen = true;
  $("#screen").setAttribute("aria-pressed", "true");
  $("#screen").textContent = "Stop sharing";
  await client.publish("screen", track);
}

async function stopScreen() {
  if (!ui.screen) return;
  ui.screen = false;
  $("#screen").setAttribute("aria-pressed", "false");
  $("#screen").textContent = "Share screen";
  await client.unpublish("screen");
}

async function toggleDeafen() {
  ui.deafened = !ui.deafened;
  for (const a of document.querySelectorAll("audio")) a.muted = ui.deafened;
  $("#deafen").setAttribute("aria-pressed", String(ui.deafened));
  $("#deafen").textContent = ui.deafened ? "Undeafen" : "Deafen";
  await client.setMediaState({ deafened: ui.deafened });
}

// -------------------------------------------------------------------------------------
// Statistics: what each remote track delivers (shown under each video, and read by
// the end-to-end tests through window.prismCall).

async function inboundStats() {
  const pc = client?.sub;
  if (!pc) return [];
  const byTrackIdentifier = new Map();
  for (const [trackId, s] of client.subs) byTrackIdentifier.set(s.transceiver.receiver.track.id, trackId);
  const out = [];
  for (const s of (await pc.getStats()).values()) {
    if (s.type !== "inbound-rtp") continue;
    const trackId = (s.mid != null && client.trackIdOfMid(s.mid)) || byTrackIdentifier.get(s.trackIdentifier) || null;
    const info = trackId ? client.tracks.get(trackId) : null;
    out.push({
      track_id: trackId,
      session_id: info?.session_id ?? null,
      user_uid: info?.user_uid ?? null,
      source: info?.source ?? null,
      kind: s.kind,
      layer: layers.get(trackId) ?? null,
      packetsReceived: s.packetsReceived ?? 0,
      packetsLost: s.packetsLost ?? 0,
      nackCount: s.nackCount ?? 0,
      bytesReceived: s.bytesReceived ?? 0,
      framesDecoded: s.framesDecoded ?? 0,
      frameWidth: s.frameWidth ?? 0,
      frameHeight: s.frameHeight ?? 0,
      totalSamplesReceived: s.totalSamplesReceived ?? 0,
      concealedSamples: s.concealedSamples ?? 0,
    });
  }
  return out;
}

async function outboundStats() {
  const pc = client?.pub;
  if (!pc) return [];
  const out = [];
  for (const s of (await pc.getStats()).values()) {
    if (s.type !== "outbound-rtp") continue;
    out.push({
      kind: s.kind,
      mid: s.mid ?? null,
      rid: s.rid ?? null,
      packetsSent: s.packetsSent ?? 0,
      framesEncoded: s.framesEncoded ?? 0,
      frameWidth: s.frameWidth ?? 0,
      frameHeight: s.frameHeight ?? 0,
      qualityLimitationReason: s.qualityLimitationReason ?? null,
    });
  }
  return out;
}

setInterval(async () => {
  for (const s of await inboundStats()) {
    if (s.kind !== "video" || !s.track_id) continue;
    const el = document.querySelector(`figure[data-track-id="${CSS.escape(s.track_id)}"] .res`);
    if (el) el.textContent = s.frameWidth ? `${s.frameWidth}×${s.frameHeight}` : "no frames";
  }
}, 1000);

window.prismCall = { client: null, eventCounts: {}, inboundStats, outboundStats, toggleMic, toggleCam, toggleScreen, toggleDeafen, leave };

// -------------------------------------------------------------------------------------
// Start

$("#mic").addEventListener("click", toggleMic);
$("#cam").addEventListener("click", toggleCam);
$("#screen").addEventListener("click", toggleScreen);
$("#deafen").addEventListener("click", toggleDeafen);
$("#leave").addEventListener("click", leave);

const form = $("#join");
form.channel.value = params.get("channel") ?? form.channel.value;
form.user.value = params.get("user") ?? `guest-${Math.random().toString(36).slice(2, 8)}`;
if (hashToken) form.token.value = hashToken;
form.addEventListener("submit", (e) => {
  e.preventDefault();
  join({
    channel: form.channel.value,
    user: form.user.value,
    token: form.token.value.trim(),
    device: params.get("device") ?? deviceId(),
  });
});
if (params.get("join") === "1") form.requestSubmit();

/** A per-browser device id, so a reload replaces the old session instead of doubling it. */
function deviceId() {
  let id = localStorage.getItem("prism.device_id");
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem("prism.device_id", id);
  }
  return id;
}
