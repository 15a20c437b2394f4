import type { NextFunction, Request, Response } from 'express';

/**
 * JSON routes parse only application/json bodies; any other body would reach
 * them as "no body" and, on a query route, silently mean "no filter". A body
 * of another type is refused with a 415 instead. OTLP has its own content
 * negotiation (JSON or protobuf) in its controller.
 */
export function requireJsonBodies(req: Request, res: Response, next: NextFunction): void {
  const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
  if (!hasBody || req.path.startsWith('/otlp/') || req.is('application/json')) return next();
  res.status(415).json({
    statusCode: 415,
    error: 'Unsupported Media Type',
    message: `request bodies must be application/json, got "${req.headers['content-type'] ?? 'none'}"`,
  });
}
