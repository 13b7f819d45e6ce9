// Types of distribus-client (src/index.js).

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A payload a Rust host sent typed (postcard), which JavaScript cannot decode. */
export interface Opaque {
  encoding: string;
  bytes: Uint8Array;
}

export type Received = Json | Opaque;

/** An error answer of the gateway. */
export class DistribusError extends Error {
  /** `not_found`, `unreachable`, `timeout`, `too_large`, `inbox_full`, `id_exists`,
   * `id_taken`, `invalid_id`, `invalid_channel`, `closed`, `unauthorized`, `limit`,
   * `rate_limited`, `bad_request`, `unsupported_version`, `internal`, or
   * `disconnected` (the client lost its connection before the answer). */
  code: string;
  constructor(code: string, message?: string);
}

export interface ConnectOptions {
  /** Bearer token, when the gateway asks for one. */
  token?: string;
  /** Reconnect after a dropped connection (default true). */
  reconnect?: boolean;
  /** First wait before reconnecting, in ms (default 1000). */
  reconnectDelay?: number;
  /** Factor by which the wait grows after each failed attempt (default 2). */
  reconnectDecay?: number;
  /** Give up reconnecting after this many ms (default 30000). */
  reconnectTimeout?: number;
  /** Requests of one turn go as one frame, and answers come batched (default true). */
  batch?: boolean;
}

export interface Location {
  host: string;
  addrs: string[];
  round_trips: number;
}

export interface Members {
  self: string;
  hosts: { host: string; addrs: string[]; channels: string[]; connected: boolean; neighbour: boolean }[];
}

export class Peer {
  readonly id: string;
  readonly host: Host;
  /**
   * A message to this peer. For a request (see {@link Peer.request}),
   * `reply` answers it: it resolves once the requester has the answer and
   * rejects with code 'no_request' when the requester no longer waits.
   */
  on(event: 'message', listener: (from: string, message: Received, reply?: (message: Json) => Promise<{}>) => void): this;
  on(event: 'removed', listener: (reason: string) => void): this;
  off(event: string, listener: (...args: any[]) => void): this;
  /** Resolves once the recipient's inbox has the message. */
  send(to: string, message: Json): Promise<{}>;
  /** Sends a request and resolves with the reply's message (rejects with 'timeout' after `timeout` ms, default 10000). */
  request(to: string, message: Json, options?: { timeout?: number }): Promise<Received>;
  /** Delivers the message to every peer on every host, once each, from this peer. */
  broadcast(message: Json): Promise<BroadcastReport>;
  /** Delivers the message to every peer whose id matches `pattern` (`room.42.*`, `room.>`), on any host, once each, from this peer. */
  sendGroup(pattern: string, message: Json): Promise<BroadcastReport>;
}

/** What a broadcast or group send reached: hosts (the node included), peers whose inbox has it, peers that missed it (inbox full), hosts that did not answer. */
export interface BroadcastReport {
  hosts: number;
  peers: number;
  missed: number;
  failed: string[];
}

export class Host {
  /** The node's host id. */
  id: string | null;
  /** The session token a reconnect resumes. */
  session: string | null;
  readonly url: string;
  readonly peers: Map<string, Peer>;
  on(event: 'disconnect' | 'close', listener: () => void): this;
  on(event: 'reconnect', listener: (resumed: boolean) => void): this;
  on(event: 'closing', listener: (why: DistribusError) => void): this;
  off(event: string, listener: (...args: any[]) => void): this;
  create(id: string): Promise<Peer>;
  remove(peer: string | Peer): Promise<void>;
  subscribe(channel: string, callback: (message: Received, channel: string) => void): Promise<void>;
  unsubscribe(channel: string, callback?: (message: Received, channel: string) => void): Promise<void>;
  /** Joins a queue group on a channel or pattern: each publish goes to one member of the group; `callback` gets this member's. */
  subscribeQueue(channel: string, group: string, callback: (message: Received, channel: string) => void): Promise<void>;
  /** Leaves a queue group. */
  unsubscribeQueue(channel: string, group: string): Promise<void>;
  publish(channel: string, message: Json): Promise<{}>;
  /** Delivers the message to every peer on every host, once each, from the node. */
  broadcast(message: Json): Promise<BroadcastReport>;
  /** Delivers the message to every peer whose id matches `pattern`, on any host, once each, from the node. */
  sendGroup(pattern: string, message: Json): Promise<BroadcastReport>;
  find(id: string): Promise<Location>;
  members(): Promise<Members>;
  listPeers(limit?: number): Promise<{ count: number; peers: string[] }>;
  stats(): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export function connect(url: string, options?: ConnectOptions): Promise<Host>;

declare const _default: { connect: typeof connect; DistribusError: typeof DistribusError; Host: typeof Host; Peer: typeof Peer };
export default _default;
