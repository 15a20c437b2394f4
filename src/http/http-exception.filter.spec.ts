import { ArgumentsHost, Logger, ServiceUnavailableException } from '@nestjs/common';
import { answerTo, HttpExceptionFilter } from './http-exception.filter';

/** What Postgres's errors become: the SQLSTATE (or socket error) decides between the caller's fault, "retry", and ours. */
describe('answerTo: database errors', () => {
  const pgError = (code: string, message = `postgres error ${code}`) => Object.assign(new Error(message), { code });
  const statusOf = (error: unknown) => answerTo(error)[0];
  const messageOf = (error: unknown) => answerTo(error)[1].message;

  it.each([
    ['57014', 'a cancel on request'],
    ['57P01', 'admin shutdown'],
    ['57P03', 'cannot connect now (starting up)'],
    ['53100', 'disk full'],
    ['53200', 'out of memory'],
    ['53300', 'too many connections'],
    ['08006', 'connection failure'],
    ['ECONNREFUSED', 'nothing listening'],
  ])('%s (%s) is a 503: unavailable, retry later', (code) => {
    expect(statusOf(pgError(code))).toBe(503);
    expect(messageOf(pgError(code))).toBe('the database is unavailable; retry later');
  });

  it.each([
    ['08P01', 'protocol violation: our bug'],
    ['53400', 'temp_file_limit: the same request exceeds it again'],
    ['57P04', 'database dropped'],
    ['42P01', 'undefined table'],
    ['23505', 'unique violation the code did not expect'],
  ])('%s (%s) is a 500: retrying would only repeat it', (code) => {
    expect(answerTo(pgError(code))).toEqual([500, { statusCode: 500, error: 'Internal Server Error', message: 'internal error' }]);
  });

  it('a statement timeout (57014, which pg names in its message) is a 503 that says the request was too slow, not the database down', () => {
    expect(answerTo(pgError('57014', 'canceling statement due to statement timeout'))).toEqual([503, {
      statusCode: 503,
      error: 'Service Unavailable',
      message: 'the database did not finish this request within its statement timeout (DB_STATEMENT_TIMEOUT_MS) and rolled back what timed out: ' +
        'a query may need a narrower time window or fewer filters; a write, a retry later',
    }]);
    expect(messageOf(pgError('57014', 'canceling statement due to user request'))).toBe('the database is unavailable; retry later');
  });

  it('a read-only server (25006) is a 503 that says so', () => {
    expect(answerTo(pgError('25006'))).toEqual([503, { statusCode: 503, error: 'Service Unavailable', message: 'the database is read-only and took no write; retry later' }]);
  });

  it.each(['40P01', '40001'])('a conflict Postgres resolved by rolling back (%s) is a 503 saying to retry', (code) => {
    expect(messageOf(pgError(code))).toBe('the request was rolled back in a conflict with a concurrent one; retry it');
    expect(statusOf(pgError(code))).toBe(503);
  });

  it('a value Postgres cannot store (class 22) is the request’s fault: a 400 naming it', () => {
    expect(answerTo(pgError('22P05', 'unsupported Unicode escape sequence'))).toEqual([400, { statusCode: 400, error: 'Bad Request', message: 'invalid value: unsupported Unicode escape sequence' }]);
  });

  it('a lost or given-up connection is a 503 by its message (pg sets no code)', () => {
    for (const message of ['Connection terminated unexpectedly', 'Query read timeout', 'timeout exceeded when trying to connect']) {
      expect(statusOf(new Error(message))).toBe(503);
    }
  });
});

describe('HttpExceptionFilter: what it logs of a 503', () => {
  afterEach(() => jest.restoreAllMocks());

  function answer(error: unknown): number {
    let status = 0;
    // Its id already set, as pino-http sets it on every request a route's middleware saw.
    const response = { headersSent: false, getHeader: () => 'request-1', status: (code: number) => ((status = code), response), json: () => response };
    const request = { method: 'GET', url: '/somewhere', path: '/somewhere', headers: {} };
    const host = { switchToHttp: () => ({ getResponse: () => response, getRequest: () => request }) } as unknown as ArgumentsHost;
    new HttpExceptionFilter().catch(error, host);
    return status;
  }

  it("logs each database error answered 503, not /health's 503 report (its probe logs when it starts failing)", () => {
    const warn = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    expect(answer(Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:5432'), { code: 'ECONNREFUSED' }))).toBe(503);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(answer(new ServiceUnavailableException({ status: 'error', error: { postgres: { status: 'down' } } }))).toBe(503);
    expect(warn).toHaveBeenCalledTimes(1);
  });
});
