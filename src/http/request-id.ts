import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** What a caller's own id may look like: a UUID, a trace id, a proxy's token; nothing that could break a log line. */
const CALLER_REQUEST_ID = /^[A-Za-z0-9._:+/=-]{1,128}$/;

export const REQUEST_ID_HEADER = 'X-Request-Id';

/**
 * The id of one request, as pino-http's genReqId: the caller's X-Request-Id
 * when it is a plausible id (a proxy or client that set one can find its
 * request in our logs), otherwise a fresh UUID. It is logged with every line
 * of the request and sent back in X-Request-Id, so an answer someone reports
 * leads to its log lines.
 */
export function assignRequestId(req: IncomingMessage, res: ServerResponse): string {
  const offered = req.headers['x-request-id'];
  const id = typeof offered === 'string' && CALLER_REQUEST_ID.test(offered) ? offered : randomUUID();
  res.setHeader(REQUEST_ID_HEADER, id);
  return id;
}
