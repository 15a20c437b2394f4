import { ArgumentsHost, Catch, ExceptionFilter, HttpException, HttpStatus, Logger } from '@nestjs/common';
import type { Request, Response } from 'express';
import { OTLP_PROTOBUF, otlpProtobufErrorBody } from '../otlp/otlp-error-body';
import { assignRequestId, REQUEST_ID_HEADER } from './request-id';
import { InvalidQueryError } from '../tracing/span-query';
import { TreeTooLargeError } from '../observability/observability.dao';
import { isDatabaseUnavailable } from '../dbs/postgres/unavailable';
import { SpansConflictError, SpansNotFoundError, TraceTooLargeError } from '../tracing/tracing.dao';

/**
 * 25006: the server takes reads but no writes: a standby the API reached
 * after a failover (before DNS moved), or a database an operator made
 * read-only. Nothing was written; the write succeeds once the primary does.
 */
const isReadOnly = (error: unknown) => (error as { code?: string })?.code === '25006';

/**
 * statement_timeout fired (57014 is also a cancel on request, which says so).
 * Postgres is up: the statement waited behind a lock or was too costly, which
 * a retry may or may not clear, and a query may need narrowing.
 */
const isStatementTimeout = (error: unknown) =>
  (error as { code?: string })?.code === '57014' && /statement timeout/i.test((error as Error)?.message ?? '');

/**
 * Postgres rolled the whole transaction back to resolve a conflict with
 * another one (class 40: a deadlock, a serialization failure). Nothing was
 * written and the same request can succeed, so it is the caller's to retry.
 * Writes lock rows in key order (lock-order.ts), which keeps them from
 * deadlocking with each other; this answers what is left (another client's
 * transaction, an operator's).
 */
function isRolledBackInConflict(error: unknown): boolean {
  const code = (error as { code?: string })?.code;
  return code === '40P01' || code === '40001';
}

/**
 * Turns every error into a JSON answer a client can act on: domain errors get
 * their 4xx, body-parser errors keep theirs, a lost database is a 503, and
 * anything else is a logged 500 that leaks no internals.
 */
@Catch()
export class HttpExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('HTTP');

  catch(error: unknown, host: ArgumentsHost): void {
    const ctx = host.switchToHttp();
    const response = ctx.getResponse<Response>();
    const request = ctx.getRequest<Request>();
    const [status, body] = answerTo(error);
    if (isAnswerTooLong(error)) {
      // The caller's to page, but an operator's to know of: MAX_RESPONSE_ITEMS is too high for these spans.
      this.logger.warn({ method: request.method, url: request.url }, 'answer too large to serialize; answered 422');
    } else if (status >= 500 && status !== HttpStatus.SERVICE_UNAVAILABLE) {
      this.logger.error({ err: error, method: request.method, url: request.url }, 'unhandled error');
    } else if (status === HttpStatus.SERVICE_UNAVAILABLE && !(error instanceof HttpException)) {
      // Not /health's 503 (terminus's ServiceUnavailableException, the one thrown as such): that is a report,
      // asked for every few seconds, and the probe logs once when it starts failing and once when it recovers.
      this.logger.warn({ method: request.method, url: request.url, reason: (error as Error)?.message }, 'database could not serve the request; answered 503');
    }
    if (response.headersSent) return;
    if (response.getHeader(REQUEST_ID_HEADER) === undefined) {
      // Refused before any route's middleware ran: a path the router cannot decode (`/%E0`) fails Nest's own
      // middleware mounts, pino-http's included. The answer still carries an id, and the log has the request.
      const id = assignRequestId(request, response);
      this.logger.warn({ reqId: id, method: request.method, url: request.url, status }, 'request refused before routing');
    }
    const otlpBody = otlpProtobufErrorBody(request, status, String(body.message ?? body.error ?? status));
    if (otlpBody) {
      response.status(status).type(OTLP_PROTOBUF).send(otlpBody);
      return;
    }
    response.status(status).json(body);
  }
}

/** body-parser's entity.too.large carries the body's declared length and the limit (BODY_LIMIT), in bytes. */
function tooLarge({ length, limit }: { length?: unknown; limit?: unknown }): string {
  if (typeof limit !== 'number') return 'request body is larger than the limit';
  return `request body${typeof length === 'number' ? ` of ${length} bytes` : ''} is larger than the limit of ${limit} bytes`;
}

/** Where a caller finds the rest of a trace or tree too large for one answer: the query routes, which page. */
function howToReadInPages(error: TraceTooLargeError | TreeTooLargeError): string {
  if (error instanceof TreeTooLargeError) {
    return `read it in pages with POST /observability/nodes/query, {"tree_id":"${error.treeId}"} and next`;
  }
  const [traceId] = error.traceIds;
  return `read it in pages with POST /tracing/spans/query, {"focus":"span","filter":{"operator":"and","conditions":[{"field":"trace_id","operator":"is","value":"${traceId}"}]}} and windowing.next`;
}

/**
 * JSON.stringify of an answer longer than V8's longest string (2^29 - 24
 * characters, ~512 MB). MAX_RESPONSE_ITEMS counts spans and nodes, not
 * bytes: a whole trace of very large spans (whole LLM prompts) can pass it
 * within the item bound. Only the answer is that long: request bodies stop
 * at BODY_LIMIT.
 */
const isAnswerTooLong = (error: unknown): boolean => error instanceof RangeError && error.message === 'Invalid string length';

/** The status and JSON body that answer `error` (the filter's whole decision, apart from logging). */
export function answerTo(error: unknown): [number, Record<string, unknown>] {
  if (error instanceof HttpException) {
    const payload = error.getResponse();
    const body = typeof payload === 'string' ? { statusCode: error.getStatus(), message: payload } : (payload as Record<string, unknown>);
    return [error.getStatus(), body];
  }
  if (error instanceof InvalidQueryError) {
    return [400, { statusCode: 400, error: 'Bad Request', message: error.message, errors: [{ field: error.field, message: error.reason }] }];
  }
  if (error instanceof SpansConflictError) return [409, { statusCode: 409, error: 'Conflict', message: error.message }];
  if (error instanceof SpansNotFoundError) return [404, { statusCode: 404, error: 'Not Found', message: error.message }];
  if (error instanceof TraceTooLargeError || error instanceof TreeTooLargeError) {
    const message = `${error.message}, more than one answer carries (MAX_RESPONSE_ITEMS); ${howToReadInPages(error)}`;
    // From a focus-trace query: the cursor past the trace, so the caller can page on without it.
    const next = error instanceof TraceTooLargeError ? error.next : undefined;
    if (next === undefined) return [422, { statusCode: 422, error: 'Unprocessable Entity', message }];
    return [422, { statusCode: 422, error: 'Unprocessable Entity', message: `${message}; to page on past it, pass this answer's \`next\` as windowing.next`, next }];
  }
  if (isAnswerTooLong(error)) {
    const message =
      'the answer is larger than one JSON response can hold (about 512 MB): read it in pages with a smaller limit ' +
      '(POST /tracing/spans/query, POST /observability/nodes/query); an operator can lower MAX_RESPONSE_ITEMS';
    return [422, { statusCode: 422, error: 'Unprocessable Entity', message }];
  }
  const bodyError = error as { type?: string; status?: number; statusCode?: number; message?: string; expose?: boolean; code?: string };
  const bodyStatus = bodyError?.status ?? bodyError?.statusCode;
  // body-parser reports a body it cannot read as an http-error: typed ones, and (untyped) a body that does not decompress.
  const unreadableBody = bodyError?.expose === true && typeof bodyStatus === 'number' && bodyStatus >= 400 && bodyStatus < 500;
  if (typeof bodyError?.type === 'string' && bodyError.type.startsWith('entity.') || bodyError?.type === 'encoding.unsupported' || bodyError?.type === 'charset.unsupported' || unreadableBody) {
    const status = bodyStatus ?? 400;
    // Malformed JSON never gets here: RequestBodies (request-bodies.ts) makes it a 400 naming the body.
    const message = bodyError.type === 'entity.too.large'
      ? tooLarge(error as { length?: unknown; limit?: unknown })
      : bodyError.type === undefined ? `request body could not be read; does it match its Content-Encoding? (${bodyError.code ?? bodyError.message})` : bodyError.message;
    return [status, { statusCode: status, error: status === 413 ? 'Payload Too Large' : status === 415 ? 'Unsupported Media Type' : 'Bad Request', message }];
  }
  if (isRolledBackInConflict(error)) {
    return [503, { statusCode: 503, error: 'Service Unavailable', message: 'the request was rolled back in a conflict with a concurrent one; retry it' }];
  }
  if (isReadOnly(error)) {
    return [503, { statusCode: 503, error: 'Service Unavailable', message: 'the database is read-only and took no write; retry later' }];
  }
  if (isStatementTimeout(error)) {
    return [503, {
      statusCode: 503,
      error: 'Service Unavailable',
      message: 'the database did not finish this request within its statement timeout (DB_STATEMENT_TIMEOUT_MS) and rolled back what timed out: ' +
        'a query may need a narrower time window or fewer filters; a write, a retry later',
    }];
  }
  if (isDatabaseUnavailable(error)) {
    return [503, { statusCode: 503, error: 'Service Unavailable', message: 'the database is unavailable; retry later' }];
  }
  // Postgres data exceptions (class 22) mean the request carried a value it cannot store.
  const pgCode = (error as { code?: string })?.code;
  if (typeof pgCode === 'string' && pgCode.startsWith('22')) {
    return [400, { statusCode: 400, error: 'Bad Request', message: `invalid value: ${(error as Error).message}` }];
  }
  return [500, { statusCode: 500, error: 'Internal Server Error', message: 'internal error' }];
}
