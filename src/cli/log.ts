import type { Logger } from '../server/engine.js';

/** Log levels, most verbose first. */
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * A logger that writes one JSON object per line (`{"t", "level", "msg", ...data}`) to a stream,
 * dropping lines below `level`. Errors in `data` are reduced to their message and code.
 */
export function jsonLogger(level: LogLevel, out: { write(line: string): unknown } = process.stderr): Logger {
  const min = LOG_LEVELS.indexOf(level);
  const line = (lvl: LogLevel) => (msg: string, data?: unknown) => {
    if (LOG_LEVELS.indexOf(lvl) < min) return;
    const entry: Record<string, unknown> = { t: new Date().toISOString(), level: lvl, msg };
    if (data instanceof Error)
      entry.error = { message: data.message, code: (data as { code?: unknown }).code };
    else if (data !== undefined) entry.data = data;
    out.write(`${JSON.stringify(entry)}\n`);
  };
  return { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') };
}
