/**
 * Whose word to take for a client's address. Behind a reverse proxy every socket comes from the
 * proxy, so per-address limits would become one limit for everybody; the proxy says who the
 * client is in a header (`X-Forwarded-For` by default), which only a trusted proxy may be believed
 * about, since anyone else can write any header.
 * @packageDocumentation
 */
import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';

/** The proxies in front of the server and the header they name the client in. */
export interface TrustProxyOptions {
  /**
   * Addresses and CIDR ranges of the proxies to believe (`'10.0.0.7'`, `'10.0.0.0/8'`,
   * `'fd00::/8'`), or the words `'loopback'` (127.0.0.0/8, ::1) and `'private'` (10/8,
   * 172.16/12, 192.168/16, fc00::/7).
   */
  proxies: readonly string[];
  /**
   * The header the proxies put the client's address in: a comma-separated list to which each
   * proxy appends the address it saw (`X-Forwarded-For`), or a single address (`X-Real-IP`).
   * @default 'x-forwarded-for'
   */
  header?: string;
}

/**
 * How the client's address is found:
 * - `false` (the default): the TCP peer's address;
 * - a {@link TrustProxyOptions}: when the peer is one of `proxies`, the header is read from the
 *   right, skipping addresses of trusted proxies; the first other address is the client's;
 * - `true` or a number `n`: trust `n` hops (true: 1) of `X-Forwarded-For` whoever the peer is.
 *   Only for setups where nothing can reach the server but through the proxy.
 */
export type TrustProxy = boolean | number | TrustProxyOptions;

/** Finds clients' addresses under one {@link TrustProxy} setting. */
export interface AddressResolver {
  /** The client's address for a request. */
  clientOf(req: IncomingMessage): string;
  /** Whether a TCP peer is a trusted proxy (its sockets carry many clients). */
  isProxy(peer: string): boolean;
}

const NAMED: Record<string, readonly string[]> = {
  loopback: ['127.0.0.0/8', '::1/128'],
  private: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

/** `::ffff:1.2.3.4` and `1.2.3.4` are one client; IPv6 in lower case. */
export function normalizeAddress(address: string): string {
  const a = address.toLowerCase();
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

/** Builds the resolver for `trust`; throws a TypeError for a malformed setting. */
export function addressResolver(trust: TrustProxy | undefined): AddressResolver {
  if (trust === undefined || trust === false || trust === 0) {
    return { clientOf: (req) => peerOf(req), isProxy: () => false };
  }
  if (typeof trust === 'boolean' || typeof trust === 'number') {
    const hops = trust === true ? 1 : trust;
    if (!(Number.isInteger(hops) && hops >= 0)) {
      throw new TypeError(`trustProxy must be a boolean, a hop count or { proxies }, got ${String(trust)}`);
    }
    return {
      clientOf(req) {
        // Nearest first: the peer, then each proxy's view from right to left.
        const chain = [peerOf(req), ...headerList(req, 'x-forwarded-for').reverse()];
        return chain[Math.min(hops, chain.length - 1)]!;
      },
      isProxy: () => true,
    };
  }
  const list = new BlockList();
  for (const entry of trust.proxies) {
    for (const e of NAMED[entry] ?? [entry]) addRange(list, e);
  }
  const isProxy = (a: string) => {
    const family = isIP(a);
    return family !== 0 && list.check(a, family === 6 ? 'ipv6' : 'ipv4');
  };
  const header = (trust.header ?? 'x-forwarded-for').toLowerCase();
  return {
    clientOf(req) {
      const peer = peerOf(req);
      if (!isProxy(peer)) return peer;
      const hops = headerList(req, header);
      for (let i = hops.length - 1; i >= 0; i--) {
        const a = hops[i]!;
        // Something a proxy would never write: keep the proxy's own address as the key.
        if (isIP(a) === 0) return peer;
        if (!isProxy(a) || i === 0) return a;
      }
      return peer; // a trusted proxy that did not say: the proxy itself
    },
    isProxy,
  };
}

function addRange(list: BlockList, entry: string): void {
  const [address, bits, extra] = entry.split('/');
  const family = isIP(address ?? '');
  const prefix = bits === undefined ? undefined : Number(bits);
  const max = family === 6 ? 128 : 32;
  if (
    family === 0 ||
    extra !== undefined ||
    (prefix !== undefined && !(Number.isInteger(prefix) && prefix >= 0 && prefix <= max))
  ) {
    throw new TypeError(
      `trustProxy: ${JSON.stringify(entry)} is not an address, a CIDR range, 'loopback' or 'private'`,
    );
  }
  const type = family === 6 ? 'ipv6' : 'ipv4';
  if (prefix === undefined) list.addAddress(address!, type);
  else list.addSubnet(address!, prefix, type);
}

function peerOf(req: IncomingMessage): string {
  return normalizeAddress(req.socket.remoteAddress ?? 'unknown');
}

/** The comma-separated entries of a header (all its copies), normalized, in order. */
function headerList(req: IncomingMessage, name: string): string[] {
  const h = req.headers[name];
  return (Array.isArray(h) ? h.join(',') : (h ?? ''))
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(normalizeAddress);
}
