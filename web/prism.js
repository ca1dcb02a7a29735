// Prism signaling protocol v1 — a complete browser client.
//
// This file is the reference client: it follows protocol-v1 (see docs/protocol.md)
// and is meant to be read by people writing their own client. It has no UI; app.js
// drives it. Everything here is plain browser JavaScript (ES2020 module), no
// framework, no build step.
//
// The model, in one paragraph: a participant joins a channel over one WebSocket
// (`rtc.join` with a single-use ticket), then runs two RTCPeerConnections that it
// offers itself — a *publish* connection carrying its own microphone/camera/screen
// (sendonly m-lines, the camera with three simulcast encodings q/h/f) and a
// *subscribe* connection with one recvonly m-line per remote track it wants.
// Renegotiation is simply a new offer on the same connection. When the socket drops,
// the session stays alive on the server for a grace window; the client reconnects with
// backoff and resumes with its resume token, and the peer connections keep running.
//
// Events (a CustomEvent's `detail`) emitted on the PrismClient:
//   state        {state: "connecting"|"joined"|"reconnecting"|"closed", reason?}
//   participants {participants: Map<session_id, participant>}  (any roster change)
//   remotetrack  {trackId, track: MediaStreamTrack, info}       (media arrived)
//   remotetrackended {trackId}
//   speaking     {session_id, user_uid, speaking, level}
//   layer        {track_id, layer}
//   mediastate   {session_id, audio_muted, video_muted, deafened}
//   error        {code, message}   (asynchronous rtc.error and local failures)
//   localtracks  {tracks: Map<source, track_id>}                (publish answer)
//   event        {type, payload}   (every server event, before it is handled)

/** Simulcast encodings for a camera: rids q/h/f, lowest first (protocol-v1 §9). */
export const CAMERA_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

const DEFAULT_BACKOFF_MS = [250, 500, 1000, 2000, 5000];
const ANSWER_TIMEOUT_MS = 10_000;

/** An error answered by the server (`rtc.error`) or raised by the client. */
export class PrismError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

/** Mints a dev session token (dev mode only: the endpoint is 404 in production). */
export async function devSessionToken(baseUrl, userUid, channelId) {
  const res = await fetch(`${baseUrl}/v1/dev/session-token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      user_uid: userUid,
      channels: { [channelId]: ["speak", "video", "screenshare"] },
    }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new PrismError(body.error?.code ?? `http_${res.status}`, body.error?.message ?? "dev token refused");
  }
  return body.token;
}

export class PrismClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.baseUrl      the server's HTTP origin (scheme://host:port), e.g. location.origin
   * @param {string} o.channelId
   * @param {string} o.deviceId     1–64 of [A-Za-z0-9_.:-]; the same user+device replaces a live session
   * @param {() => Promise<string>} o.sessionToken  returns a session token (called per fresh join)
   */
  constructor({ baseUrl, channelId, deviceId, sessionToken }) {
    super();
    this.baseUrl = baseUrl;
    this.channelId = channelId;
    this.deviceId = deviceId;
    this.sessionToken = sessionToken;

    this.state = "idle";
    this.ws = null;
    this.self = null; // {session_id, user_uid, device_id, permissions}
    this.resumeToken = null;
    this.iceServers = [];
    this.backoffMs = DEFAULT_BACKOFF_MS;
    this.answerTimeoutMs = ANSWER_TIMEOUT_MS;

    this.nextRequest = 1;
    // request_id → {type, payload, resolve, reject, timer, sent}. Requests survive a
    // socket drop and are re-sent with the same request_id after a resume: the server's
    // idempotency cache answers any that had already been executed (protocol-v1 §2).
    this.pending = new Map();

    this.participants = new Map(); // session_id → participant (tracks included)
    this.tracks = new Map(); // track_id → track object of a remote participant

    // Publish side: source → {track, transceiver}; the answer maps mids to track ids.
    this.local = new Map();
    this.localTrackIds = new Map(); // source → track_id
    this.pub = null;
    // Subscribe side: track_id → {transceiver, maxLayer, paused}.
    this.subs = new Map();
    this.unservable = new Set(); // track ids the server rejected
    this.sub = null;
    this.muted = { audio_muted: false, video_muted: false, deafened: false };
    this.iceRestarts = { publish: 0, subscribe: 0 };
    this.leaving = false;
  }

  // ---------------------------------------------------------------------------------
  // Joining, the socket, requests

  /** Joins the channel afresh: session token → join ticket → WebSocket → rtc.join. */
  async join() {
    this.setState("connecting");
    const token = await this.sessionToken();
    const res = await fetch(
      `${this.baseUrl}/v1/rtc/channels/${encodeURIComponent(this.channelId)}/join-ticket`,
      {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify({ device_id: this.deviceId }),
      },
    );
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      throw new PrismError(body.error?.code ?? `http_${res.status}`, body.error?.message ?? "join ticket refused");
    }
    const policy = body.connection_policy ?? {};
    if (Array.isArray(policy.reconnect_backoff_ms) && policy.reconnect_backoff_ms.length > 0) {
      this.backoffMs = policy.reconnect_backoff_ms;
    }
    if (policy.answer_timeout_ms > 0) this.answerTimeoutMs = policy.answer_timeout_ms;
    this.iceServers = body.ice_servers ?? [];
    this.signalingUrl = body.signaling_url; // authoritative (protocol-v1 §1)
    await this.openSocket();
    const joined = await this.request("rtc.join", { ticket: body.ticket }, { beforeJoin: true });
    this.onJoined(joined);
    return joined;
  }

  /** Opens the WebSocket; resolves when it is open. */
  openSocket() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.signalingUrl);
      this.ws = ws;
      this.joinedSocket = false;
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new PrismError("socket", "WebSocket failed"));
      ws.onmessage = (e) => this.onMessage(e.data);
      ws.onclose = (e) => this.onSocketClosed(ws, e);
    });
  }

  /**
   * Sends a request and resolves with the response payload, or rejects with a
   * PrismError. Requests made while the socket is down wait and go out after the resume.
   */
  request(type, payload, { beforeJoin = false } = {}) {
    const id = `r${this.nextRequest++}`;
    return new Promise((resolve, reject) => {
      const p = { type, payload, resolve, reject, beforeJoin, sent: false, timer: null };
      this.pending.set(id, p);
      this.sendPending(id, p);
    });
  }

  sendPending(id, p) {
    const open = this.ws?.readyState === WebSocket.OPEN;
    if (!open || (!this.joinedSocket && !p.beforeJoin)) return; // flushed after the (re)join
    this.ws.send(JSON.stringify({ type: p.type, request_id: id, channel_id: this.channelId, payload: p.payload }));
    p.sent = true;
    clearTimeout(p.timer);
    p.timer = setTimeout(() => {
      // No answer in time: the socket is probably dead. Closing it starts a resume,
      // after which the request is re-sent with the same id.
      if (this.pending.has(id) && this.ws?.readyState === WebSocket.OPEN) this.ws.close(4000, "answer timeout");
    }, this.answerTimeoutMs);
  }

  settle(id, error, payload) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(payload);
  }

  onMessage(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.request_id != null) {
      if (m.type === "rtc.error") {
        const p = this.pending.get(m.request_id);
        if (p && m.payload.code === "rate_limited") {
          // Not executed, not cached: retry the same request after the hint.
          p.sent = false;
          setTimeout(() => this.sendPending(m.request_id, p), m.payload.retry_after_ms ?? 100);
          return;
        }
        this.settle(m.request_id, new PrismError(m.payload.code, m.payload.message));
      } else {
        this.settle(m.request_id, null, m.payload);
      }
      return;
    }
    this.onEvent(m.type, m.payload);
  }

  onEvent(type, p) {
    this.emit("event", { type, payload: p });
    switch (type) {
      case "rtc.participant.joined":
        this.addParticipant(p.participant);
        this.emitParticipants();
        this.scheduleSubscribe();
        break;
      case "rtc.participant.left":
        this.removeParticipant(p.session_id);
        this.emitParticipants();
        this.scheduleSubscribe();
        break;
      case "rtc.track.published": {
        const owner = this.participants.get(p.track.session_id);
        if (owner) {
          owner.tracks = owner.tracks.filter((t) => t.track_id !== p.track.track_id).concat([p.track]);
        }
        this.tracks.set(p.track.track_id, p.track);
        this.emitParticipants();
        this.scheduleSubscribe();
        break;
      }
      case "rtc.track.unpublished": {
        const owner = this.participants.get(p.session_id);
        if (owner) owner.tracks = owner.tracks.filter((t) => t.track_id !== p.track_id);
        this.tracks.delete(p.track_id);
        this.emitParticipants();
        this.scheduleSubscribe();
        break;
      }
      case "rtc.media.state": {
        const who = this.participants.get(p.session_id);
        if (who) {
          who.media_state = { audio_muted: p.audio_muted, video_muted: p.video_muted, deafened: p.deafened };
          for (const t of who.tracks) {
            t.muted = t.kind === "audio" ? p.audio_muted : p.video_muted;
          }
        }
        this.emit("mediastate", p);
        break;
      }
      case "rtc.speaking":
        this.emit("speaking", p);
        break;
      case "rtc.layer.changed":
        this.emit("layer", p);
        break;
      case "rtc.kicked":
        this.kicked = p;
        this.emit("error", { code: `kicked_${p.reason}`, message: p.message });
        break;
      case "rtc.error":
        this.onAsyncError(p);
        break;
      case "rtc.ice.candidate": {
        // Server trickle (optional: Prism puts its candidates in the SDP).
        const pc = p.pc === "publish" ? this.pub : this.sub;
        if (pc && p.candidate) {
          pc.addIceCandidate({ candidate: p.candidate, sdpMid: p.sdp_mid, sdpMLineIndex: p.sdp_mline_index }).catch(() => {});
        }
        break;
      }
      default:
        break; // unknown events are ignored, as unknown fields are
    }
  }

  /** An `rtc.error` with `request_id: null`: the server gave up on a peer connection. */
  onAsyncError(p) {
    this.emit("error", p);
    if (p.code !== "negotiation_failed") return;
    // Prism closes a peer connection whose ICE stayed disconnected past its grace and
    // names it in the message; the participant stays and offers a new one.
    if (/\bpublish\b/.test(p.message)) this.rebuildPublish();
    else if (/\bsubscribe\b/.test(p.message)) this.rebuildSubscribe();
  }

  onJoined(j) {
    this.joinedSocket = true;
    this.self = { session_id: j.session_id, user_uid: j.user_uid, device_id: j.device_id, permissions: j.permissions };
    this.resumeToken = j.resume_token;
    this.joins = (this.joins ?? 0) + 1;
    this.lastResumed = j.resumed; // true when this rtc.joined resumed the session
    if (Array.isArray(j.ice_servers)) this.iceServers = j.ice_servers; // fresher than the ticket's
    // The snapshot replaces what we knew (after a resume, people may have come and gone).
    this.participants.clear();
    this.tracks.clear();
    for (const p of j.participants) this.addParticipant(p);
    this.setState("joined");
    this.emitParticipants();
    // Requests made while the socket was down go out now, in order.
    for (const [id, p] of this.pending) if (!p.sent) this.sendPending(id, p);
    this.scheduleSubscribe();
  }

  onSocketClosed(ws, e) {
    if (ws !== this.ws) return;
    this.joinedSocket = false;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.sent = false;
      // A join in flight on this socket is lost with it; its caller decides what next.
      if (p.beforeJoin) this.settle(id, new PrismError("socket_closed", `socket closed (${e.code})`));
    }
    // The reconnect loop handles its own sockets; after rtc.leave the close is expected.
    if (this.recovering || this.leaving || this.state === "closed") return;
    if (this.kicked || [4403, 4409, 4410].includes(e.code)) {
      // Kicked, banned or replaced: reconnecting cannot undo a server decision.
      this.shutdown(this.kicked ? `kicked: ${this.kicked.reason}` : `closed (${e.code})`);
      return;
    }
    if (this.state === "joined") this.reconnect();
  }

  /**
   * Reconnects with backoff (connection_policy.reconnect_backoff_ms) and resumes the
   * session with its resume token. Peer connections keep running meanwhile: media
   * flows while UDP does. If the server no longer knows the session, joins afresh.
   */
  async reconnect() {
    this.recovering = true;
    this.setState("reconnecting");
    this.attempt = 0;
    try {
      while (!this.leaving) {
        await sleep(this.backoffMs[Math.min(this.attempt, this.backoffMs.length - 1)]);
        this.attempt += 1;
        if (this.leaving) return;
        try {
          await this.openSocket();
        } catch {
          continue; // server unreachable: next backoff step
        }
        try {
          const joined = await this.request("rtc.join", { resume_token: this.resumeToken }, { beforeJoin: true });
          this.onJoined(joined);
          return;
        } catch (err) {
          if (err.code === "socket_closed") continue;
          // resume_failed: the grace window is over or the token was spent.
          await this.rejoinFresh();
          return;
        }
      }
    } finally {
      this.recovering = false;
    }
  }

  /** The session is gone on the server: new ticket, new session, publish again. */
  async rejoinFresh() {
    this.closePeerConnections();
    for (const [id] of this.pending) this.settle(id, new PrismError("resume_failed", "session lost"));
    while (!this.leaving) {
      try {
        this.ws?.close(1000);
        await this.join();
        if (this.local.size > 0) this.rebuildPublish();
        return;
      } catch (err) {
        this.emit("error", { code: err.code ?? "join_failed", message: err.message });
        await sleep(this.backoffMs[Math.min(this.attempt, this.backoffMs.length - 1)]);
        this.attempt += 1;
      }
    }
  }

  /** Leaves the call: `rtc.leave`, then the server closes the socket with 1000. */
  async leave() {
    this.leaving = true;
    try {
      if (this.joinedSocket) await this.request("rtc.leave", {});
    } catch {
      // the socket may already be gone; leaving is local anyway
    }
    this.ws?.close(1000);
    this.shutdown("left");
  }

  shutdown(reason) {
    this.leaving = true;
    this.closePeerConnections();
    for (const [id] of this.pending) this.settle(id, new PrismError("closed", reason));
    for (const { track } of this.local.values()) track.stop();
    this.local.clear();
    this.participants.clear();
    this.tracks.clear();
    this.emitParticipants();
    this.setState("closed", reason);
  }

  closePeerConnections() {
    for (const trackId of this.subs.keys()) this.emit("remotetrackended", { trackId });
    this.subs.clear();
    this.pub?.close();
    this.sub?.close();
    this.pub = null;
    this.sub = null;
  }

  /** Drops the signaling socket without leaving, as a network failure would. */
  dropSocket() {
    this.ws?.close(4000, "dropped by the client");
  }

  // ---------------------------------------------------------------------------------
  // Media state

  /** Any subset of {audio_muted, video_muted, deafened}. */
  async setMediaState(change) {
    Object.assign(this.muted, change);
    await this.request("rtc.media.state", change);
  }

  // ---------------------------------------------------------------------------------
  // Publishing

  newPeerConnection(role) {
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
    });
    pc.onicecandidate = (e) => {
      // Optional for Prism (ICE-lite, it learns addresses from STUN) but harmless.
      const c = e.candidate;
      if (c && !c.candidate) return;
      this.request("rtc.ice.candidate", {
        pc: role,
        candidate: c ? c.candidate : null,
        sdp_mid: c ? c.sdpMid : null,
        sdp_mline_index: c ? c.sdpMLineIndex : null,
      }).catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" && !this.leaving) {
        // ICE restart: a new offer with fresh credentials on the same connection.
        this.iceRestarts[role] += 1;
        if (role === "publish" && pc === this.pub) this.negotiatePublish({ iceRestart: true });
        if (role === "subscribe" && pc === this.sub) this.negotiateSubscribe({ iceRestart: true });
      }
    };
    return pc;
  }

  /**
   * Publishes (or replaces) the track of a source: "microphone", "camera", "screen"
   * or "screen_audio". The camera is sent as three simulcast encodings.
   */
  async publish(source, track) {
    const have = this.local.get(source);
    if (have) {
      await have.transceiver.sender.replaceTrack(track);
      have.track.stop();
      have.track = track;
      return;
    }
    if (!this.pub) this.pub = this.newPeerConnection("publish");
    const transceiver = this.addSender(source, track);
    this.local.set(source, { track, transceiver });
    await this.negotiatePublish();
  }

  addSender(source, track) {
    const init = { direction: "sendonly", streams: [] };
    if (source === "camera") init.sendEncodings = CAMERA_ENCODINGS.map((e) => ({ ...e }));
    if (source === "screen") track.contentHint = "detail";
    return this.pub.addTransceiver(track, init);
  }

  /** Stops publishing a source: its m-line is stopped, which unpublishes the track. */
  async unpublish(source) {
    const have = this.local.get(source);
    if (!have) return;
    this.local.delete(source);
    have.track.stop();
    have.transceiver.stop();
    await this.negotiatePublish();
  }

  /** The publish connection was closed by the server: a new one with the same tracks. */
  rebuildPublish() {
    this.pub?.close();
    this.pub = null;
    if (this.local.size === 0) return; // nothing to publish: the next publish() makes one
    this.pub = this.newPeerConnection("publish");
    for (const [source, l] of this.local) l.transceiver = this.addSender(source, l.track);
    this.negotiatePublish();
  }

  negotiatePublish(opts = {}) {
    // Changes made before a queued offer is created ride on that offer.
    if (this.pubQueued && !opts.iceRestart) return this.pubChain;
    this.pubQueued = true;
    this.pubChain = serialize(this.pubChain, async () => {
      this.pubQueued = false;
      const pc = this.pub;
      if (!pc) return;
      const offer = await pc.createOffer({ iceRestart: !!opts.iceRestart });
      await pc.setLocalDescription(offer);
      const tracks = [];
      for (const [source, l] of this.local) {
        if (l.transceiver.mid != null) tracks.push({ mid: l.transceiver.mid, source });
      }
      const answer = await this.request("rtc.offer.publish", { sdp: pc.localDescription.sdp, tracks }).catch(
        (err) => rollback(pc, err),
      );
      if (pc !== this.pub) return; // rebuilt meanwhile
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      this.localTrackIds.clear();
      for (const t of answer.tracks) {
        for (const [source, l] of this.local) if (l.transceiver.mid === t.mid) this.localTrackIds.set(source, t.track_id);
      }
      this.emit("localtracks", { tracks: this.localTrackIds });
    }).catch((err) => this.emit("error", { code: err.code ?? "publish_failed", message: err.message }));
    return this.pubChain;
  }

  // ---------------------------------------------------------------------------------
  // Subscribing

  /** Caps a video subscription's simulcast layer ("q" | "h" | "f") or pauses it. */
  async updateSubscription(trackId, { maxLayer, paused } = {}) {
    const s = this.subs.get(trackId);
    if (s && maxLayer) s.maxLayer = maxLayer;
    const payload = { track_id: trackId };
    if (maxLayer) payload.max_layer = maxLayer;
    if (paused !== undefined) payload.paused = paused;
    await this.request("rtc.subscription.update", payload);
  }

  /** Coalesces roster changes into one subscribe offer. */
  scheduleSubscribe() {
    if (this.subScheduled || this.state !== "joined") return;
    this.subScheduled = true;
    queueMicrotask(() => {
      this.subScheduled = false;
      this.negotiateSubscribe();
    });
  }

  rebuildSubscribe() {
    for (const trackId of this.subs.keys()) this.emit("remotetrackended", { trackId });
    this.subs.clear();
    this.sub?.close();
    this.sub = null;
    this.negotiateSubscribe();
  }

  negotiateSubscribe(opts = {}) {
    this.subChain = serialize(this.subChain, async () => {
      if (this.state !== "joined") return;
      let changed = !!opts.iceRestart;
      // Subscribe to every remote track not subscribed yet...
      for (const [trackId, t] of this.tracks) {
        if (this.subs.has(trackId) || this.unservable.has(trackId)) continue;
        if (!this.sub) this.sub = this.newPeerConnection("subscribe");
        const transceiver = this.sub.addTransceiver(t.kind, { direction: "recvonly" });
        this.subs.set(trackId, { transceiver, kind: t.kind, maxLayer: null, paused: false });
        changed = true;
      }
      // ...and end subscriptions of tracks that are gone (a stopped m-line ends it).
      for (const [trackId, s] of this.subs) {
        if (this.tracks.has(trackId)) continue;
        s.transceiver.stop();
        this.subs.delete(trackId);
        this.emit("remotetrackended", { trackId });
        changed = true;
      }
      const pc = this.sub;
      if (!changed || !pc) return;
      pc.ontrack = (e) => this.onRemoteTrack(e);
      const offer = await pc.createOffer({ iceRestart: !!opts.iceRestart });
      await pc.setLocalDescription(offer);
      const subscriptions = [];
      for (const [trackId, s] of this.subs) {
        const entry = { mid: s.transceiver.mid, track_id: trackId };
        if (s.kind === "video" && s.maxLayer) entry.max_layer = s.maxLayer;
        subscriptions.push(entry);
      }
      const answer = await this.request("rtc.offer.subscribe", { sdp: pc.localDescription.sdp, subscriptions }).catch(
        (err) => rollback(pc, err),
      );
      if (pc !== this.sub) return;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      for (const r of answer.rejected) {
        // The m-line was answered inactive. unknown_track: it went away while we
        // offered; codec_unsupported / forbidden: it cannot be served. Either way,
        // stop asking for it.
        const trackId = this.trackIdOfMid(r.mid);
        if (trackId) {
          this.subs.get(trackId).transceiver.stop();
          this.subs.delete(trackId);
          this.unservable.add(trackId);
        }
        this.emit("error", { code: r.code, message: `subscription to ${trackId ?? "mid " + r.mid} rejected` });
      }
    }).catch((err) => this.emit("error", { code: err.code ?? "subscribe_failed", message: err.message }));
    return this.subChain;
  }

  onRemoteTrack(e) {
    for (const [trackId, s] of this.subs) {
      if (s.transceiver === e.transceiver) {
        this.emit("remotetrack", { trackId, track: e.track, info: this.tracks.get(trackId) });
        return;
      }
    }
  }

  /** track_id of a subscribe-connection mid (for reading getStats()). */
  trackIdOfMid(mid) {
    for (const [trackId, s] of this.subs) if (s.transceiver.mid === mid) return trackId;
    return null;
  }

  // ---------------------------------------------------------------------------------
  // Roster helpers

  addParticipant(p) {
    this.participants.set(p.session_id, { ...p, tracks: [...p.tracks] });
    for (const t of p.tracks) this.tracks.set(t.track_id, t);
  }

  removeParticipant(sessionId) {
    const p = this.participants.get(sessionId);
    if (!p) return;
    for (const t of p.tracks) this.tracks.delete(t.track_id);
    this.participants.delete(sessionId);
  }

  emitParticipants() {
    this.emit("participants", { participants: this.participants });
  }

  setState(state, reason) {
    this.state = state;
    this.emit("state", { state, reason });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The offer was refused (rtc.error): nothing changed on the server, so return the
 * connection to its last stable state, then let the caller report the error.
 */
async function rollback(pc, err) {
  if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
  throw err;
}

/** Runs `task` after `chain` settles: one negotiation at a time per connection. */
function serialize(chain, task) {
  return (chain ?? Promise.resolve()).catch(() => {}).then(task);
}
