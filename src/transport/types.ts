/**
 * What a connection tells its owner. Handlers are set once with {@link Connection.setHandlers};
 * frames that arrive before that are buffered by the transport, in order.
 */
export interface ConnectionHandlers {
  /** One whole binary frame arrived. */
  frame(data: Uint8Array): void;
  /** The connection closed (by either side, or died). Called at most once. */
  close(code: number, reason: string): void;
  /** The send buffer drained below the transport's low-water mark (backpressure relief). */
  drain?(): void;
}

/**
 * One ordered, reliable-while-open, bidirectional stream of binary frames.
 * A transport never reorders or duplicates frames on one connection; it may lose the tail
 * when the connection dies, which postbox's acks and resends cover.
 */
export interface Connection {
  /** Unique within the transport, for logs. */
  readonly id: string;
  /** The peer's address, when the transport knows it (used for per-address limits). */
  readonly remoteAddress?: string;
  /** Bytes queued for sending and not yet handed to the network. */
  readonly bufferedAmount: number;
  /**
   * Bytes sent that the peer has not yet shown it read (at least `bufferedAmount`), when the
   * transport can tell (the WebSocket server transport does, by pings). The server engine pauses
   * deliveries and holds key claims above `sendHighWaterBytes` of it, so bytes parked in kernel
   * buffers for a peer that stopped reading count too. Without it, `bufferedAmount` is used.
   */
  readonly unreadBytes?: number;
  /** False once closed or known dead. */
  readonly isOpen: boolean;
  /** Queues one frame. Ignored once the connection is closed. */
  send(data: Uint8Array): void;
  /** Closes the connection; the peer's `close` handler gets `code` and `reason` when the transport carries them. */
  close(code?: number, reason?: string): void;
  /** Installs the handlers; call once. */
  setHandlers(handlers: ConnectionHandlers): void;
}

/** The client side of a transport: opens connections to one server. */
export interface ClientTransport {
  /** For logs and conformance reports. */
  readonly name: string;
  /** Opens a connection, rejecting when the server cannot be reached. */
  connect(): Promise<Connection>;
}

/** The server side of a transport: accepts connections. */
export interface ServerTransport {
  /** For logs and conformance reports. */
  readonly name: string;
  /** Starts accepting; `onConnection` gets each new connection. */
  listen(onConnection: (connection: Connection) => void): Promise<void>;
  /** Stops accepting new connections. Open connections are left to their owner. */
  close(): Promise<void>;
}
