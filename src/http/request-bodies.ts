import { BadRequestException, CallHandler, ExecutionContext, NestInterceptor, SetMetadata, UnsupportedMediaTypeException } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { isUtf8 } from 'node:buffer';
import { json, raw } from 'body-parser';
import type { Request, RequestHandler, Response } from 'express';
import type { Observable } from 'rxjs';
import { IS_PUBLIC } from '../auth/public.decorator';
import { OTLP_PROTOBUF } from '../otlp/otlp-error-body';
import { firstInexactInteger, inexactIntegerMessage, jsonPathAt } from './exact-integers';
import { formatPath } from './zod-validation';

const TAKES_OTLP = Symbol('takesOtlp');

/**
 * Marks the OTLP/HTTP route: its body may also be binary protobuf (a Buffer
 * in req.body), and its JSON's int64 values are checked by its decoder,
 * which names the OTLP field.
 */
export const TakesOtlp = () => SetMetadata(TAKES_OTLP, true);

/**
 * Reads request bodies, once a route has taken the request and the API-key
 * guard has let it through, so a caller without a key, a path no route
 * serves, or a public route never has its body read or parsed (Node
 * discards it). In order: only JSON (415 otherwise; protobuf too on the
 * OTLP route), within BODY_LIMIT (413), as valid UTF-8 (415 for another
 * charset) without an integer JSON would round, and parsed; a body that is
 * not JSON is a 400 like any bad body. Errors are
 * thrown, so the exception filter answers them, and logs and metrics carry
 * the route.
 */
export class RequestBodies implements NestInterceptor {
  private readonly parseJson: RequestHandler;
  private readonly parseOtlpJson: RequestHandler;
  private readonly parseProtobuf: RequestHandler;

  constructor(
    private readonly reflector: Reflector,
    limit: string,
  ) {
    this.parseJson = json({ limit, verify: (_req, _res, body, encoding) => checkBytes(body, encoding, { exactIntegers: true }) });
    this.parseOtlpJson = json({ limit, verify: (_req, _res, body, encoding) => checkBytes(body, encoding, { exactIntegers: false }) });
    this.parseProtobuf = raw({ type: OTLP_PROTOBUF, limit });
  }

  async intercept(context: ExecutionContext, next: CallHandler): Promise<Observable<unknown>> {
    const marked = (key: string | symbol) => this.reflector.getAllAndOverride<boolean>(key, [context.getHandler(), context.getClass()]) === true;
    // Public routes (health, metrics) take no body, and their callers have no key: a body sent there is never read.
    if (context.getType() === 'http' && !marked(IS_PUBLIC)) {
      const otlp = marked(TAKES_OTLP);
      const http = context.switchToHttp();
      await this.read(http.getRequest<Request>(), http.getResponse<Response>(), otlp);
    }
    return next.handle();
  }

  private async read(req: Request, res: Response, otlp: boolean): Promise<void> {
    const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
    if (!hasBody) return;
    if (req.is('application/json')) {
      await run(otlp ? this.parseOtlpJson : this.parseJson, req, res).catch((error: unknown) => {
        throw describeUnparsableJson(error);
      });
    } else if (otlp && req.is(OTLP_PROTOBUF)) {
      await run(this.parseProtobuf, req, res);
    } else if (!otlp) {
      // Any other body would reach the route as "no body" and, on a query route, silently mean "no filter".
      throw new UnsupportedMediaTypeException(`request bodies must be application/json, got "${req.headers['content-type'] ?? 'none'}"`);
    }
    // OTLP answers another Content-Type itself, in the encoding OTLP/HTTP prescribes (see OtlpController).
  }
}

/** A body-parser middleware as a promise: resolves once the body is read, rejects with its error. */
function run(parse: RequestHandler, req: Request, res: Response): Promise<void> {
  return new Promise((resolve, reject) => parse(req, res, (error?: unknown) => (error ? reject(error) : resolve())));
}

/**
 * What body-parser is asked to check in the raw bytes, before it parses
 * them (a thrown error keeps its status; the filter answers it):
 * - UTF-8 (RFC 8259 requires it between systems): body-parser would also
 *   take UTF-16 and UTF-32, which the checks below would have to decode as
 *   it does, byte-order guesses included;
 * - valid UTF-8: body-parser would decode invalid UTF-8 to U+FFFD and store
 *   that instead of what was sent;
 * - no integer JSON.parse would round (exact-integers.ts).
 */
function checkBytes(body: Buffer, encoding: string, checks: { exactIntegers: boolean }): void {
  if (!/^utf-?8$/i.test(encoding)) refuse(415, `JSON bodies must be UTF-8, got charset "${encoding}"`);
  if (!isUtf8(body)) refuse(400, 'request body is not valid UTF-8');
  if (!checks.exactIntegers) return;
  const inexact = firstInexactInteger(body);
  if (inexact !== null) {
    // A BadRequestException passes through body-parser untouched, and carries `errors` like every other bad body.
    const message = inexactIntegerMessage(inexact.token);
    const field = formatPath(jsonPathAt(body, inexact.at) ?? []) || '(body)';
    throw new BadRequestException({ statusCode: 400, error: 'Bad Request', message: `${field}: ${message}`, errors: [{ field, message }] });
  }
}

/** An error body-parser passes on as it is: its type (entity.*) tells the filter it is about the body. */
function refuse(status: number, message: string): never {
  throw Object.assign(new Error(message), { status, type: 'entity.verify.failed' });
}

/**
 * A body that is not JSON at all gets the answer every other bad body gets:
 * a 400 whose `errors` name the field, here the body itself. (Left alone,
 * the filter would answer body-parser's SyntaxError with a bare message.)
 * Any other error is returned as it is.
 */
function describeUnparsableJson(error: unknown): unknown {
  const parseError = error as { type?: string; message?: string; body?: unknown };
  if (parseError?.type !== 'entity.parse.failed') return error;
  const scalar = typeof parseError.body === 'string' ? jsonScalar(parseError.body) : undefined;
  const message = scalar !== undefined ? `must be a JSON object, got ${scalar}` : `could not be parsed as JSON: ${parseError.message}`;
  return new BadRequestException({ statusCode: 400, error: 'Bad Request', message: `(body): ${message}`, errors: [{ field: '(body)', message }] });
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
