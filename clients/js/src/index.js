// distribus-client: attach peers to a distribus node from a browser or
// Node.js, over the node's client gateway (docs/CLIENT-PROTOCOL.md).
// No dependencies in browsers; in Node.js without a global WebSocket it
// loads the `ws` package.

const PROTOCOL_VERSION = 1;
// Most requests in one batch frame (the gateway takes up to 4096).
const MAX_BATCH = 1024;
const BATCH_BYTES = 256 * 1024;
// Events are acknowledged after this many, or this many milliseconds after
// the first unacknowledged one: well inside the gateway's window (1,024).
const ACK_EVERY = 128;
const ACK_DELAY_MS = 20;

/** An error answer of the gateway, with its code (`not_found`, `timeout`, …). */
export class DistribusError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'DistribusError';
    this.code = code;
  }
}

async function webSocketClass() {
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  const mod = await import('ws');
  return mod.WebSocket || mod.default;
}

function decodePayload(frame) {
  if ('data' in frame) return frame.data;
  const raw = atob(frame.base64 || '');
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return { encoding: frame.encoding, bytes };
}

/** Minimal event emitter (browsers have no `events` module). */
class Emitter {
  constructor() { this._handlers = new Map(); }
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    const set = this._handlers.get(event);
    if (set) set.delete(fn);
    return this;
  }
  emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return false;
    for (const fn of [...set]) fn(...args);
    return set.size > 0;
  }
}

/** A peer living on the node, owned by this connection. */
export class Peer extends Emitter {
  constructor(host, id) {
    super();
    this.host = host;
    this.id = id;
  }

  /** Sends `message` (any JSON value); resolves once the recipient's inbox has it. */
  send(to, message) {
    return this.host._request({ op: 'send', from: this.id, to, data: message === undefined ? null : message });
  }

  /**
   * Sends `message` as a request and resolves with the reply's message.
   * The asked peer gets it as a 'message' event whose third argument
   * replies. Rejects with code 'timeout' when no reply comes in
   * `options.timeout` ms (default 10000).
   */
  async request(to, message, options = {}) {
    const req = { op: 'request', from: this.id, to, data: message === undefined ? null : message };
    if (options.timeout !== undefined) req.timeout = Math.max(0, Math.round(options.timeout));
    return decodePayload(await this.host._request(req));
  }

  /**
   * Delivers `message` to every peer on every host, once each, from this
   * peer; resolves with `{hosts, peers, missed, failed}`.
   */
  broadcast(message) {
    return this.host._request({ op: 'broadcast', from: this.id, data: message === undefined ? null : message });
  }

  /**
   * Delivers `message` to every peer whose id matches `pattern` (`room.42.*`,
   * `room.>`), on any host, once each, from this peer; resolves with
   * `{hosts, peers, missed, failed}`.
   */
  sendGroup(pattern, message) {
    return this.host._request({ op: 'send_group', from: this.id, to: pattern, data: message === undefined ? null : message });
  }
}

/** A connection to a node's client gateway. Make one with {@link connect}. */
export class Host extends Emitter {
  constructor(url, options) {
    super();
    this.url = url;
    this.options = {
      token: undefined,
      reconnect: true,
      reconnectDelay: 1000,
      reconnectDecay: 2,
      reconnectTimeout: 30000,
      batch: true,
      ...options,
    };
    this.peers = new Map();
    this.channels = new Map();
    /** Queue group memberships: `[channel, group]` as JSON -> callback. */
    this.queues = new Map();
    this.id = null;
    this.session = null;
    this._nextId = 1;
    this._pending = new Map();
    this._outbox = [];
    this._socket = null;
    this._closed = false;
    this._connected = false;
    // Events are numbered; the gateway keeps each until acknowledged and
    // sends the unacknowledged ones again after a resume.
    this._seen = 0;
    this._acked = 0;
    this._ackTimer = null;
    this._helloId = 0;
  }

  async _open() {
    const WebSocket = await webSocketClass();
    const socket = new WebSocket(this.url);
    this._socket = socket;
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new DistribusError('unreachable', `cannot connect to ${this.url}`));
      socket.onclose = () => reject(new DistribusError('unreachable', `cannot connect to ${this.url}`));
    });
    socket.onmessage = (ev) => this._frame(ev.data);
    socket.onclose = () => this._dropped(socket);
    socket.onerror = () => {};
    this._connected = true;
    const hello = { op: 'hello', version: PROTOCOL_VERSION, batch: this.options.batch, acks: true };
    if (this.options.token) hello.token = this.options.token;
    if (this.session) {
      hello.resume = this.session;
      hello.seq = this._seen;
    }
    this._acked = this._seen;
    this._helloId = this._nextId;
    let welcome;
    try {
      welcome = await this._request(hello);
    } catch (e) {
      this._closed = true;
      socket.close(1000);
      throw e;
    }
    this.id = welcome.host;
    this.session = welcome.session;
    this.limits = welcome.limits;
    return welcome;
  }

  _frame(text) {
    let f;
    try { f = JSON.parse(typeof text === 'string' ? text : text.toString()); } catch { return; }
    if (Array.isArray(f)) {
      for (const item of f) this._one(item);
    } else {
      this._one(f);
    }
    this._ackLater();
  }

  /** Acknowledges at once after ACK_EVERY events, else soon. */
  _ackLater() {
    if (this._seen === this._acked) return;
    if (this._seen - this._acked >= ACK_EVERY) this._ackNow();
    else if (this._ackTimer === null) this._ackTimer = setTimeout(() => this._ackNow(), ACK_DELAY_MS);
  }

  _ackNow() {
    if (this._ackTimer !== null) clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (this._seen === this._acked || !this._connected) return;
    this._acked = this._seen;
    this._outbox.push(`{"op":"ack","seq":${this._seen}}`);
    if (this._outbox.length === 1) queueMicrotask(() => this._flush());
  }

  _one(f) {
    if (f.seq !== undefined) {
      if (f.seq <= this._seen) return; // sent again after a resume; already had
      this._seen = f.seq;
    }
    if (f.event === 'message') {
      const peer = this.peers.get(f.peer);
      if (peer && f.request === undefined) {
        peer.emit('message', f.from, decodePayload(f));
      } else if (peer) {
        // A request comes with the function that answers it.
        const reply = (message) => this._request({
          op: 'reply', from: peer.id, to: f.from, request: f.request,
          data: message === undefined ? null : message,
        });
        peer.emit('message', f.from, decodePayload(f), reply);
      }
    } else if (f.event === 'publish' && f.queue !== undefined) {
      const cb = this.queues.get(JSON.stringify([f.subscription ?? f.channel, f.queue]));
      if (cb) cb(decodePayload(f), f.channel);
    } else if (f.event === 'publish') {
      // Through a wildcard subscription, the event names its pattern.
      const subs = this.channels.get(f.subscription ?? f.channel);
      if (subs) for (const cb of [...subs]) cb(decodePayload(f), f.channel);
    } else if (f.event === 'removed') {
      const peer = this.peers.get(f.peer);
      this.peers.delete(f.peer);
      if (peer) peer.emit('removed', f.reason);
    } else if (f.event === 'closing') {
      this.emit('closing', new DistribusError(f.code, f.message));
    } else if (f.id !== undefined) {
      // A new session numbers its events from 1.
      if (f.id === this._helloId && !(f.ok && f.ok.resumed)) this._seen = this._acked = 0;
      const p = this._pending.get(f.id);
      if (!p) return;
      this._pending.delete(f.id);
      if (f.error) p.reject(new DistribusError(f.error.code, f.error.message));
      else p.resolve(f.ok);
    }
  }

  _request(req) {
    if (!this._connected) {
      return Promise.reject(new DistribusError('disconnected', 'not connected to the gateway'));
    }
    const id = this._nextId++;
    req.id = id;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      // Requests made in one turn of the event loop go as one batch frame:
      // one WebSocket frame (and one write) instead of one per request.
      // A full batch goes at once, so the node works on it while this
      // turn makes the next.
      this._outbox.push(JSON.stringify(req));
      if (this._outbox.length === 1) queueMicrotask(() => this._flush());
      else if (this._outbox.length >= MAX_BATCH && this.options.batch) this._flush();
    });
  }

  _flush() {
    const out = this._outbox;
    this._outbox = [];
    if (out.length === 0 || !this._connected) return;
    if (!this.options.batch) {
      for (const item of out) this._socket.send(item);
      return;
    }
    // A batch stays under MAX_BATCH requests and BATCH_BYTES, so it never
    // passes the gateway's frame limit unless one request alone does.
    let part = [];
    let bytes = 0;
    const send = () => {
      if (part.length) this._socket.send(part.length === 1 ? part[0] : `[${part.join(',')}]`);
      part = [];
      bytes = 0;
    };
    for (const item of out) {
      if (part.length === MAX_BATCH || (part.length && bytes + item.length > BATCH_BYTES)) send();
      part.push(item);
      bytes += item.length + 1;
    }
    send();
  }

  _failPending(code, message) {
    this._outbox = [];
    for (const p of this._pending.values()) p.reject(new DistribusError(code, message));
    this._pending.clear();
  }

  async _dropped(socket) {
    if (socket !== this._socket) return;
    this._connected = false;
    // An answer that was not read is unknown: the request may have been done.
    this._failPending('disconnected', 'the connection dropped before the answer');
    if (this._closed) return;
    this.emit('disconnect');
    if (!this.options.reconnect) {
      this._closed = true;
      this.emit('close');
      return;
    }
    const started = Date.now();
    let delay = this.options.reconnectDelay;
    while (!this._closed && Date.now() - started < this.options.reconnectTimeout) {
      await new Promise((r) => setTimeout(r, delay));
      if (this._closed) return;
      delay = delay * this.options.reconnectDecay;
      try {
        const welcome = await this._open();
        if (!welcome.resumed) await this._restore();
        this.emit('reconnect', welcome.resumed);
        return;
      } catch (e) {
        if (e.code === 'unauthorized' || e.code === 'unsupported_version') break;
      }
    }
    this._closed = true;
    this.emit('close');
  }

  /** The session expired on the node: make the peers and subscriptions again. */
  async _restore() {
    for (const id of [...this.peers.keys()]) {
      try { await this._request({ op: 'create', peer: id }); } catch (e) {
        const peer = this.peers.get(id);
        this.peers.delete(id);
        if (peer) peer.emit('removed', e.message);
      }
    }
    for (const channel of this.channels.keys()) {
      await this._request({ op: 'subscribe', channel });
    }
    for (const key of this.queues.keys()) {
      const [channel, queue] = JSON.parse(key);
      await this._request({ op: 'subscribe', channel, queue });
    }
  }

  /** Creates a peer on the node; resolves once the network can find it. */
  async create(id) {
    if (this.peers.has(id)) throw new DistribusError('id_exists', `peer ${JSON.stringify(id)} exists`);
    const peer = new Peer(this, id);
    this.peers.set(id, peer);
    try {
      await this._request({ op: 'create', peer: id });
    } catch (e) {
      this.peers.delete(id);
      throw e;
    }
    return peer;
  }

  /** Removes a peer (by id or object) and withdraws it from the network. */
  async remove(peer) {
    const id = typeof peer === 'string' ? peer : peer.id;
    this.peers.delete(id);
    await this._request({ op: 'remove', peer: id });
  }

  /** Calls `callback(message, channel)` for every message published on `channel`. */
  async subscribe(channel, callback) {
    let subs = this.channels.get(channel);
    const first = !subs;
    if (first) {
      subs = new Set();
      this.channels.set(channel, subs);
    }
    subs.add(callback);
    if (first) {
      try {
        await this._request({ op: 'subscribe', channel });
      } catch (e) {
        this.channels.delete(channel);
        throw e;
      }
    }
  }

  /** Removes `callback` (or every callback) from `channel`. */
  async unsubscribe(channel, callback) {
    const subs = this.channels.get(channel);
    if (!subs) return;
    if (callback) subs.delete(callback); else subs.clear();
    if (subs.size === 0) {
      this.channels.delete(channel);
      await this._request({ op: 'unsubscribe', channel });
    }
  }

  /**
   * Joins the queue group `group` on `channel` (a name or pattern): each
   * message published on a matching channel goes to one member of the
   * group, on any node, and `callback(message, channel)` is called for the
   * ones this member gets. One callback per group and connection.
   */
  async subscribeQueue(channel, group, callback) {
    const key = JSON.stringify([channel, group]);
    if (this.queues.has(key)) {
      throw new DistribusError('bad_request', `already a member of ${group} on ${channel}`);
    }
    this.queues.set(key, callback);
    try {
      await this._request({ op: 'subscribe', channel, queue: group });
    } catch (e) {
      this.queues.delete(key);
      throw e;
    }
  }

  /** Leaves the queue group `group` on `channel`. */
  async unsubscribeQueue(channel, group) {
    if (this.queues.delete(JSON.stringify([channel, group]))) {
      await this._request({ op: 'unsubscribe', channel, queue: group });
    }
  }

  /** Publishes `message` (any JSON value) on `channel`. */
  publish(channel, message) {
    return this._request({ op: 'publish', channel, data: message === undefined ? null : message });
  }

  /**
   * Delivers `message` to every peer on every host, once each, from the
   * node; resolves with `{hosts, peers, missed, failed}`.
   */
  broadcast(message) {
    return this._request({ op: 'broadcast', data: message === undefined ? null : message });
  }

  /**
   * Delivers `message` to every peer whose id matches `pattern`, on any
   * host, once each, from the node; resolves with `{hosts, peers, missed, failed}`.
   */
  sendGroup(pattern, message) {
    return this._request({ op: 'send_group', to: pattern, data: message === undefined ? null : message });
  }

  /** Where a peer lives: `{host, addrs, round_trips}`. */
  find(id) {
    return this._request({ op: 'find', peer: id });
  }

  /** The other live hosts: `{self, hosts: [{host, addrs, channels, connected}]}`. */
  members() {
    return this._request({ op: 'members' });
  }

  /** Peers on the node: `{count, peers}` (at most `limit` ids). */
  listPeers(limit = 1000) {
    return this._request({ op: 'peers', limit });
  }

  /** The node's counters. */
  stats() {
    return this._request({ op: 'stats' });
  }

  /** Closes the connection; the node removes this connection's peers. */
  async close() {
    if (this._closed) return;
    this._closed = true;
    this._connected = false;
    this._failPending('closed', 'the client was closed');
    const socket = this._socket;
    if (!socket) return;
    await new Promise((resolve) => {
      const done = () => resolve();
      socket.onclose = done;
      try { socket.close(1000, 'bye'); } catch { done(); }
      setTimeout(done, 2000);
    });
    this.emit('close');
  }
}

/**
 * Connects to a node's client gateway, e.g. `await connect('ws://localhost:7402')`.
 * Options: `token`, `reconnect` (default true), `reconnectDelay` (ms, 1000),
 * `reconnectDecay` (2), `reconnectTimeout` (ms, 30000), `batch` (true: requests
 * of one turn go as one frame, and the gateway batches its answers).
 */
export async function connect(url, options = {}) {
  const host = new Host(url, options);
  await host._open();
  return host;
}

export default { connect, DistribusError, Host, Peer };
