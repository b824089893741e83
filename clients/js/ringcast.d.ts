// Types for ringcast.js 0.1.0 (protocol v1). The implementation is ringcast.js, next to
// this file; `npm test` type-checks test/types-check.ts against these declarations.

export = ringcast;
export as namespace ringcast;

declare namespace ringcast {
  /** Any JSON value: what `data` carries in every frame. */
  type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

  type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";
  type TransportKind = "websocket" | "longpoll";

  /** An error the server sent (`err` frame, HTTP error) or one the client raised. `code`
   *  is the server's (400, 403, 404, 409, 413, 429, 503, 401), a WebSocket close code, 408
   *  for a request the server did not answer in time, or 0 for a connection problem. */
  interface RingcastError extends Error {
    name: "RingcastError";
    code: number;
    frame?: unknown;
  }

  interface MessageMeta {
    /** The concrete channel the message was published on (the subscription may be a pattern). */
    channel: string;
    /** Stream sequence on history-enabled channels. */
    seq?: number;
  }

  interface PresenceChange {
    channel: string;
    user: string;
    conn: number;
  }

  interface PresenceMember {
    user: string | null;
    conn: number;
    info?: Json;
  }

  interface NotifyMeta {
    nid: string;
    ts: number;
  }

  /** Returning a promise delays the ack until it resolves; throwing (or rejecting) leaves
   *  the notification unacked, so the server delivers it again. */
  type NotifyHandler = (data: Json, meta: NotifyMeta) => void | Promise<unknown>;

  interface SubscribeOptions {
    /** Resume after this sequence on a history-enabled channel (first subscribe only;
     *  afterwards the client resumes from the last `seq` it saw). */
    since?: number;
    /** Join the channel's presence set and receive `join`/`leave`. */
    presence?: boolean;
    onJoin?: (change: PresenceChange) => void;
    onLeave?: (change: PresenceChange) => void;
    /** `err` 409: history no longer reaches back to the position; reload your state. The
     *  client then subscribes live without `since`. */
    onResync?: (error: RingcastError) => void;
    /** The server confirmed the subscription (again after every reconnect). */
    onSubscribed?: () => void;
    /** The server refused the subscription (403, 400, 413, ...); it has ended. */
    onError?: (error: RingcastError) => void;
  }

  interface Options {
    /** A JWT, or a function returning one (called on every connection attempt, so an
     *  expired token can be replaced). Sent as `?token=`. */
    token?: string | (() => string | undefined | Promise<string | undefined>);
    /** Transports to try in order; default `["websocket", "longpoll"]`. */
    transports?: TransportKind[];
    reconnect?: boolean;
    backoffBaseMs?: number;
    backoffMaxMs?: number;
    maxAttempts?: number;
    stableAfterMs?: number;
    drainJitterMs?: number;
    connectTimeoutMs?: number;
    requestTimeoutMs?: number;
    outboxMax?: number;
    nidMemory?: number;
    pendingNotifyMax?: number;
    pollTimeoutMs?: number;
    pollRetries?: number;
    subscribeRetries?: number;
    /** WebSocket constructor to use instead of the global one (e.g. the `ws` package). */
    WebSocket?: unknown;
    /** fetch to use for long-poll instead of the global one. */
    fetch?: (input: string, init?: object) => Promise<unknown>;
    /** Gateway URL when passing options as the only argument of `connect`. */
    url?: string;
    onOpen?: (info: OpenInfo) => void;
    onClose?: (info: CloseInfo) => void;
    onClosed?: (info: CloseInfo) => void;
    onStateChange?: (state: State) => void;
    onReconnecting?: (info: { attempt: number; delayMs: number }) => void;
    onError?: (error: Error) => void;
    onResync?: (info: { channel: string; error: RingcastError }) => void;
    onTransportError?: (error: RingcastError, transport: TransportKind) => void;
    onNotify?: NotifyHandler;
  }

  interface OpenInfo {
    conn: number;
    node: string;
    transport: TransportKind;
  }

  interface CloseInfo {
    code: number;
    reason: string;
  }

  interface EventMap {
    open: OpenInfo;
    /** One connection ended (the client may reconnect). */
    close: CloseInfo;
    /** The client stopped for good. */
    closed: CloseInfo;
    stateChange: State;
    reconnecting: { attempt: number; delayMs: number };
    error: Error;
    resync: { channel: string; error: RingcastError };
    transportError: RingcastError;
  }

  class Subscription {
    readonly channel: string;
    readonly active: boolean;
    unsubscribe(): void;
    presence(): Promise<PresenceMember[]>;
  }

  class Client {
    constructor(url?: string, options?: Options);
    readonly state: State;
    /** The open transport, or null while not connected. */
    readonly transport: { readonly kind: TransportKind } | null;
    /** `welcome.conn` of the current connection. */
    readonly connId: number | null;
    readonly node: string | null;
    connect(): Promise<Client>;
    ready(): Promise<Client>;
    close(): void;
    subscribe(channel: string, onMessage: (data: Json, meta: MessageMeta) => void, options?: SubscribeOptions): Subscription;
    publish(channel: string, data: Json): Promise<void>;
    presence(channel: string): Promise<PresenceMember[]>;
    ping(): Promise<number>;
    onNotify(handler: NotifyHandler | null): void;
    on<K extends keyof EventMap>(event: K, handler: (value: EventMap[K]) => void): () => void;
  }

  const VERSION: string;
  const DEFAULTS: Readonly<Required<Pick<Options,
    "transports" | "reconnect" | "backoffBaseMs" | "backoffMaxMs" | "maxAttempts" | "stableAfterMs" | "drainJitterMs" |
    "connectTimeoutMs" | "requestTimeoutMs" | "outboxMax" | "nidMemory" | "pendingNotifyMax" | "pollTimeoutMs" |
    "pollRetries" | "subscribeRetries">>>;

  /** Creates a client and starts connecting. `url`: `http://host:port`, `wss://host/ws`,
   *  or nothing for the page's own origin. */
  function connect(url?: string, options?: Options): Client;
  function connect(options: Options): Client;

  /** Equal-jitter exponential backoff, in milliseconds. */
  function backoffDelay(attempt: number, baseMs: number, maxMs: number, random?: () => number): number;
  /** NATS-style wildcard match of a subscription pattern against a concrete channel. */
  function matches(pattern: string, channel: string): boolean;
  function endpoints(url?: string): { ws: string; http: string };
  const RingcastError: {
    new (code: number, message: string, frame?: unknown): RingcastError;
    (code: number, message: string, frame?: unknown): RingcastError;
  };
  class BoundedSet<T = unknown> {
    constructor(max: number);
    readonly size: number;
    has(key: T): boolean;
    add(key: T): void;
  }
}
