import { ClickHouseError, parseError } from '@clickhouse/client';
import { CircuitBreaker, classifySendError, describeSendError, fullJitterBackoff, MirrorSendError, publicSendError } from './retry-policy';

describe('fullJitterBackoff', () => {
  const options = { baseBackoffMs: 200, maxBackoffMs: 10_000 };

  it('doubles the ceiling per attempt and caps it at maxBackoffMs', () => {
    const justUnderOne = () => 0.999999;
    const ceilings = [1, 2, 3, 4, 5, 6, 7, 8].map((attempt) => fullJitterBackoff(attempt, options, justUnderOne));
    expect(ceilings).toEqual([199, 399, 799, 1599, 3199, 6399, 9999, 9999]);
  });

  it('draws uniformly below the ceiling', () => {
    expect(fullJitterBackoff(3, options, () => 0)).toBe(0);
    expect(fullJitterBackoff(3, options, () => 0.5)).toBe(400);
    for (let i = 0; i < 1000; i++) {
      const delay = fullJitterBackoff(4, options);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(1600);
    }
  });
});

describe('classifySendError', () => {
  it.each([
    ['159', 'TIMEOUT_EXCEEDED'],
    ['202', 'TOO_MANY_SIMULTANEOUS_QUERIES'],
    ['209', 'SOCKET_TIMEOUT'],
    ['210', 'NETWORK_ERROR'],
    ['241', 'MEMORY_LIMIT_EXCEEDED'],
    ['242', 'TABLE_IS_READ_ONLY'],
    ['243', 'NOT_ENOUGH_SPACE'],
    ['252', 'TOO_MANY_PARTS'],
    ['439', 'CANNOT_SCHEDULE_TASK'],
    ['319', 'UNKNOWN_STATUS_OF_INSERT'],
    ['425', 'SYSTEM_ERROR'],
    ['999', 'KEEPER_EXCEPTION'],
    ['3', 'UNEXPECTED_END_OF_FILE'],
  ])('retries ClickHouse code %s (%s)', (code, type) => {
    expect(classifySendError(new ClickHouseError({ code, type, message: 'm' }))).toBe('transient');
  });

  it.each([
    ['60', 'UNKNOWN_TABLE'],
    ['62', 'SYNTAX_ERROR'],
    ['16', 'NO_SUCH_COLUMN_IN_TABLE'],
    ['27', 'CANNOT_PARSE_INPUT_ASSERTION_FAILED'],
    ['26', 'CANNOT_PARSE_QUOTED_STRING'],
    ['6', 'CANNOT_PARSE_TEXT'],
    ['53', 'TYPE_MISMATCH'],
    ['117', 'INCORRECT_DATA'],
    ['81', 'UNKNOWN_DATABASE'],
    ['516', 'AUTHENTICATION_FAILED'],
    ['497', 'ACCESS_DENIED'],
  ])('does not retry ClickHouse code %s (%s)', (code, type) => {
    expect(classifySendError(new ClickHouseError({ code, type, message: 'm' }))).toBe('permanent');
  });

  it('reads the code from the error @clickhouse/client builds out of a server response', () => {
    const tooManyParts = parseError('Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS) (version 25.3.1.1)');
    const unknownTable = parseError('Code: 60. DB::Exception: Table tracing.spanz does not exist. (UNKNOWN_TABLE) (version 25.3.1.1)');
    expect(classifySendError(tooManyParts)).toBe('transient');
    expect(classifySendError(unknownTable)).toBe('permanent');
  });

  it.each(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN'])('retries socket error %s', (code) => {
    expect(classifySendError(Object.assign(new Error(`connect ${code}`), { code }))).toBe('transient');
  });

  it('retries the client timeout, a hung-up socket and a proxy error page', () => {
    expect(classifySendError(new Error('Timeout error.'))).toBe('transient');
    expect(classifySendError(new Error('socket hang up'))).toBe('transient');
    expect(classifySendError(parseError('<html><body>502 Bad Gateway</body></html>'))).toBe('transient');
    expect(classifySendError(Object.assign(new Error('Service Unavailable'), { statusCode: 503 }))).toBe('transient');
  });

  it('does not retry an HTTP 4xx other than 429 (Too Many Requests), nor a bug in our own code', () => {
    expect(classifySendError(Object.assign(new Error('Forbidden'), { statusCode: 403 }))).toBe('permanent');
    expect(classifySendError(Object.assign(new Error('Too Many Requests'), { statusCode: 429 }))).toBe('transient');
    expect(classifySendError(new TypeError("Cannot read properties of undefined (reading 'map')"))).toBe('permanent');
  });
});

describe('describeSendError', () => {
  it('names the ClickHouse code and type', () => {
    const error = parseError('Code: 60. DB::Exception: Table tracing.spanz does not exist. (UNKNOWN_TABLE) (version 25.3.1.1)');
    expect(describeSendError(error)).toBe('ClickHouse code 60 UNKNOWN_TABLE: Table tracing.spanz does not exist.');
  });

  it('keeps one line of at most 500 characters', () => {
    const description = describeSendError(new Error(`<html>\n${'x'.repeat(2000)}\n</html>`));
    expect(description).not.toContain('\n');
    expect(description).toHaveLength(500);
  });

  it('names an error answer with an empty body as not ClickHouse\'s, where the client\'s own error says nothing', () => {
    expect(describeSendError(parseError(''))).toBe("an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)");
    // Everything else keeps its own words: a proxy's page, socket failures, timeouts, our own errors.
    expect(describeSendError(parseError('<html><body>502 Bad Gateway</body></html>'))).toBe('<html><body>502 Bad Gateway</body></html>');
    expect(describeSendError(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:8123'), { code: 'ECONNREFUSED' }))).toBe('connect ECONNREFUSED 127.0.0.1:8123');
    expect(describeSendError(new Error('Timeout error.'))).toBe('Timeout error.');
    expect(describeSendError(new Error('sink exploded'))).toBe('sink exploded');
  });
});

describe('publicSendError: what /health shows of a send failure', () => {
  it('gives the kind and code, never the message, which names hosts, users and grants', () => {
    const denied = parseError('Code: 497. DB::Exception: mirror: Not enough privileges. To execute this query, it\'s necessary to have the grant INSERT ON tracing.spans. (ACCESS_DENIED) (version 25.3.1.1)');
    expect(publicSendError(denied)).toBe('ClickHouse code 497 ACCESS_DENIED');
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.3.7:8123'), { code: 'ECONNREFUSED' });
    expect(publicSendError(refused)).toBe('no answer (ECONNREFUSED)');
    expect(publicSendError(new Error('Timeout error.'))).toBe('no answer within the request timeout');
    expect(publicSendError(parseError(''))).toBe("an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)");
    expect(publicSendError(Object.assign(new Error('<html>502 at ch.internal</html>'), { statusCode: 502 }))).toBe('HTTP 502');
    expect(publicSendError(new Error('ClickHouse at http://mirror:***@ch.internal:8123 does not answer'))).toBe('failed (the log says how)');
    // A wrapper names the server in its message; its cause carries the code.
    const wrapped = new Error('ClickHouse migration 0001_spans failed: mirror: Not enough privileges on ch.internal', { cause: denied });
    expect(publicSendError(wrapped)).toBe('ClickHouse code 497 ACCESS_DENIED');
    expect(publicSendError(new MirrorSendError('ClickHouse schema is not applied yet (ClickHouse at http://ch.internal:8123 ...)', 'ClickHouse schema is not applied yet'))).toBe(
      'ClickHouse schema is not applied yet',
    );
  });
});

describe('CircuitBreaker', () => {
  function breaker(failureThreshold = 3, openMs = 1000) {
    const clock = { now: 0 };
    return { clock, breaker: new CircuitBreaker({ failureThreshold, openMs }, () => clock.now) };
  }

  it('opens after failureThreshold consecutive failures; a success in between resets the count', () => {
    const { breaker: b } = breaker(3);
    b.recordFailure('send');
    b.recordFailure('send');
    b.recordSuccess();
    b.recordFailure('send');
    b.recordFailure('send');
    expect(b.state).toBe('closed');
    b.recordFailure('send');
    expect(b.state).toBe('open');
    expect(b.admit()).toBe('wait');
  });

  it('lets exactly one probe through once openMs has passed', () => {
    const { clock, breaker: b } = breaker(1, 1000);
    b.recordFailure('send');
    clock.now = 999;
    expect(b.admit()).toBe('wait');
    expect(b.msUntilHalfOpen()).toBe(1);
    clock.now = 1000;
    expect(b.state).toBe('half_open');
    expect(b.admit()).toBe('probe');
    expect(b.probing).toBe(true);
    expect(b.admit()).toBe('wait');
  });

  it('keeps one probe out: a send made before it opened and failing while the probe is out lets no second probe go', () => {
    const { clock, breaker: b } = breaker(1, 1000);
    b.recordFailure('send');
    clock.now = 1000;
    expect(b.admit()).toBe('probe');
    // An insert let through while the breaker was closed times out now.
    b.recordFailure('send');
    expect(b.state).toBe('open');
    clock.now = 2000;
    expect(b.admit()).toBe('wait');
    b.recordFailure('probe');
    clock.now = 3000;
    expect(b.admit()).toBe('probe');
  });

  it('closes when the probe succeeds and re-opens for another openMs when it fails', () => {
    const { clock, breaker: b } = breaker(5, 1000);
    for (let i = 0; i < 5; i++) b.recordFailure('send');
    clock.now = 1000;
    expect(b.admit()).toBe('probe');
    b.recordFailure('probe');
    expect(b.state).toBe('open');
    expect(b.msUntilHalfOpen()).toBe(1000);

    clock.now = 2000;
    expect(b.admit()).toBe('probe');
    b.recordSuccess();
    expect(b.state).toBe('closed');
    expect(b.admit()).toBe('send');
  });
});
