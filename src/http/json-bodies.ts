import { isUtf8 } from 'node:buffer';
import { json } from 'body-parser';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { answeredBeforeRouting, describeUnparsableJson, requireJsonBodies } from './json-content-type';

/**
 * body-parser would decode invalid UTF-8 to U+FFFD and store that instead of
 * what was sent: refuse it with a 400 (type entity.* so the filter keeps the status).
 */
function refuseInvalidUtf8(_req: unknown, _res: unknown, body: Buffer, encoding: string): void {
  if (/^utf-?8$/i.test(encoding) && !isUtf8(body)) {
    throw Object.assign(new Error('request body is not valid UTF-8'), { status: 400, type: 'entity.verify.failed' });
  }
}

/**
 * How every route's body is read, in order: only JSON (requireJsonBodies),
 * within `limit`, as valid UTF-8, and a body that is not JSON answered like
 * any bad body (describeUnparsableJson). Plain (req, res, next) middleware,
 * so Nest can apply it after request logging and metrics (see AppModule).
 */
export function jsonBodies(limit: string): RequestHandler[] {
  const parse = json({ limit, verify: refuseInvalidUtf8 });
  const parseDescribed = (req: Request, res: Response, next: NextFunction) =>
    parse(req, res, (error?: unknown) => {
      if (!error) return next();
      answeredBeforeRouting(res);
      describeUnparsableJson(error, req, res, next);
    });
  return [requireJsonBodies, parseDescribed];
}

