import { BadRequestException } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';

/**
 * JSON routes parse only application/json bodies; any other body would reach
 * them as "no body" and, on a query route, silently mean "no filter". A body
 * of another type is refused with a 415 instead. OTLP has its own content
 * negotiation (JSON or protobuf) in its controller.
 */
export function requireJsonBodies(req: Request, res: Response, next: NextFunction): void {
  const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
  // originalUrl: under Nest's middleware mount, req.path is what is left after the mount's match.
  if (!hasBody || req.originalUrl.startsWith('/otlp/') || req.is('application/json')) return next();
  answeredBeforeRouting(res);
  res.status(415).json({
    statusCode: 415,
    error: 'Unsupported Media Type',
    message: `request bodies must be application/json, got "${req.headers['content-type'] ?? 'none'}"`,
  });
}

/**
 * A body that is not JSON at all gets the answer every other bad body gets:
 * a 400 whose `errors` name the field, here the body itself. (Left alone,
 * Nest would answer body-parser's SyntaxError with a bare message.)
 */
export function describeUnparsableJson(error: unknown, _req: Request, _res: Response, next: NextFunction): void {
  const parseError = error as { type?: string; message?: string; body?: unknown };
  if (parseError?.type !== 'entity.parse.failed') return next(error);
  const scalar = typeof parseError.body === 'string' ? jsonScalar(parseError.body) : undefined;
  const message = scalar !== undefined ? `must be a JSON object, got ${scalar}` : `could not be parsed as JSON: ${parseError.message}`;
  next(new BadRequestException({ statusCode: 400, error: 'Bad Request', message: `(body): ${message}`, errors: [{ field: '(body)', message }] }));
}

/**
 * body-parser's strict mode refuses a body that is valid JSON but neither an
 * object nor an array (null, "x", 1) with a SyntaxError that calls it invalid
 * JSON ("null" is not valid JSON). It is valid; it is not an object, and that
 * is what the answer says. The kind of a valid scalar body, else undefined.
 */
function jsonScalar(body: string): string | undefined {
  try {
    const value: unknown = JSON.parse(body);
    return value === null ? 'null' : typeof value === 'object' ? undefined : typeof value;
  } catch {
    return undefined;
  }
}

/**
 * Marks an answer given before any route ran: Nest mounts middleware as a
 * route of its own, so req.route would name the mount ("/{*path}"), which
 * the HTTP metrics must not take for the request's route.
 */
export function answeredBeforeRouting(res: Response): void {
  res.locals.answeredBeforeRouting = true;
}

export function wasAnsweredBeforeRouting(res: Response): boolean {
  return res.locals.answeredBeforeRouting === true;
}
