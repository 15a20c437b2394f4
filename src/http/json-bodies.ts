import { BadRequestException } from '@nestjs/common';
import { isUtf8 } from 'node:buffer';
import { json } from 'body-parser';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { firstInexactInteger, inexactIntegerMessage } from './exact-integers';
import { answeredBeforeRouting, describeUnparsableJson, requireJsonBodies } from './json-content-type';

/**
 * What body-parser is asked to check in the raw bytes, before it parses them
 * (type entity.verify.failed, so the exception filter keeps the status):
 * - valid UTF-8: body-parser would decode invalid UTF-8 to U+FFFD and store
 *   that instead of what was sent;
 * - no integer JSON.parse would round (exact-integers.ts). OTLP/JSON is left
 *   to its decoder, which names the OTLP field (its int64 values are strings).
 */
function verifyBody(req: Request, _res: unknown, body: Buffer, encoding: string): void {
  const utf8 = /^utf-?8$/i.test(encoding);
  if (utf8 && !isUtf8(body)) refuse(400, 'request body is not valid UTF-8');
  if (req.originalUrl.startsWith('/otlp/')) return;
  const inexact = firstInexactInteger(utf8 ? body : Buffer.from(decoded(body, encoding)));
  if (inexact !== null) {
    // A BadRequestException passes through body-parser untouched, and carries `errors` like every other bad body.
    const message = inexactIntegerMessage(inexact);
    throw new BadRequestException({ statusCode: 400, error: 'Bad Request', message: `(body): ${message}`, errors: [{ field: '(body)', message }] });
  }
}

/** A body in another Unicode encoding body-parser accepts (UTF-16), as text; one it cannot read is a 415. */
function decoded(body: Buffer, encoding: string): string {
  try {
    return new TextDecoder(encoding).decode(body);
  } catch {
    return refuse(415, `charset "${encoding}" is not supported; send JSON as UTF-8`);
  }
}

function refuse(status: number, message: string): never {
  throw Object.assign(new Error(message), { status, type: 'entity.verify.failed' });
}

/**
 * How every route's body is read, in order: only JSON (requireJsonBodies),
 * within `limit`, as valid UTF-8 without an integer it would round, and a body that is not JSON answered like
 * any bad body (describeUnparsableJson). Plain (req, res, next) middleware,
 * so Nest can apply it after request logging and metrics (see AppModule).
 */
export function jsonBodies(limit: string): RequestHandler[] {
  const parse = json({ limit, verify: verifyBody });
  const parseDescribed = (req: Request, res: Response, next: NextFunction) =>
    parse(req, res, (error?: unknown) => {
      if (!error) return next();
      answeredBeforeRouting(res);
      describeUnparsableJson(error, req, res, next);
    });
  return [requireJsonBodies, parseDescribed];
}

