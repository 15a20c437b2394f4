import { DatabaseError } from 'pg';
import { namingPostgres } from './postgres-cli';

describe('namingPostgres', () => {
  const AT = 'Postgres at postgres://app@db:5432/tracing';
  const THEN = 'run the same command again once it answers';
  const named = (error: unknown) => namingPostgres(AT, error, THEN);

  it("names the server and what to do for Postgres's own errors and the driver's connection failures", () => {
    const terminated = new DatabaseError('terminating connection due to administrator command', 100, 'error');
    expect(named(terminated)).toEqual(new Error(`${AT} failed: terminating connection due to administrator command; ${THEN}`));
    for (const text of ['Connection terminated unexpectedly', 'timeout exceeded when trying to connect', 'Client has encountered a connection error and is not queryable']) {
      expect(named(new Error(text))).toEqual(new Error(`${AT} failed: ${text}; ${THEN}`));
    }
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:5432'), { code: 'ECONNREFUSED', syscall: 'connect' });
    expect((named(refused) as Error).message).toBe(`${AT} failed: connect ECONNREFUSED 10.0.0.5:5432; ${THEN}`);
    // A connection cut under a query in flight: pg hands the socket's error on as it is.
    const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', syscall: 'read' });
    expect((named(reset) as Error).message).toBe(`${AT} failed: read ECONNRESET; ${THEN}`);
    const unknownHost = Object.assign(new Error('getaddrinfo ENOTFOUND db'), { code: 'ENOTFOUND', syscall: 'getaddrinfo' });
    expect((named(unknownHost) as Error).message).toBe(`${AT} failed: getaddrinfo ENOTFOUND db; ${THEN}`);
  });

  it('passes every other error as it is: failures already named where they happen, and faults of ours', () => {
    for (const error of [
      new Error('ClickHouse at http://ch:8123 stopped answering during verify: socket hang up; run it again once it is back'),
      new Error('Postgres failed during the copy of spans: canceling statement due to user request; run it again to resume once it answers'),
      new TypeError("Cannot read properties of undefined (reading 'rows')"),
      'a string',
    ]) {
      expect(named(error)).toBe(error);
    }
  });
});
