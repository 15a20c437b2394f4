import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { OpenAPIObject } from '@nestjs/swagger';

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

const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

/** Documents X-Request-Id on every answer of every operation: call it once every answer is in the document. */
export function documentRequestIds(document: OpenAPIObject): OpenAPIObject {
  const header = {
    description: "This request's id, as in its log lines: the caller's own X-Request-Id when it sent a plausible one, else a fresh UUID",
    schema: { type: 'string' },
  };
  for (const path of Object.values(document.paths)) {
    for (const method of METHODS) {
      for (const response of Object.values(path[method]?.responses ?? {})) {
        if (response && 'description' in response) response.headers = { ...response.headers, [REQUEST_ID_HEADER]: header };
      }
    }
  }
  return document;
}
