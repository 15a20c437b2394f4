import { isDatabaseUnavailable, serverWentAway } from './unavailable';

/** The HTTP answers these give are specified in http-exception.filter.spec.ts; this is the split between the two readings. */
describe('serverWentAway within isDatabaseUnavailable', () => {
  const pgError = (code: string, message = `postgres error ${code}`) => Object.assign(new Error(message), { code });

  it.each([
    ['57P01', pgError('57P01')],
    ['57P02', pgError('57P02')],
    ['57P03', pgError('57P03')],
    ['ECONNREFUSED', pgError('ECONNREFUSED')],
    ['ECONNRESET', pgError('ECONNRESET')],
    ['a cut connection (no code)', new Error('Connection terminated unexpectedly')],
  ])('%s: the server went away, so it is unavailable too', (_, error) => {
    expect(serverWentAway(error)).toBe(true);
    expect(isDatabaseUnavailable(error)).toBe(true);
  });

  it.each([
    ['53300 too many connections', pgError('53300')],
    ['53100 disk full', pgError('53100')],
    ['57014 statement timeout', pgError('57014')],
    ['08006 connection failure', pgError('08006')],
    ['ETIMEDOUT', pgError('ETIMEDOUT')],
    ['a query read timeout (no code)', new Error('Query read timeout')],
  ])('%s: unavailable (retry) but the server is still there, so it did not go away', (_, error) => {
    expect(isDatabaseUnavailable(error)).toBe(true);
    expect(serverWentAway(error)).toBe(false);
  });

  it.each([
    ['08P01 protocol violation', pgError('08P01')],
    ['57P04 database dropped', pgError('57P04')],
    ['42P01 undefined table', pgError('42P01')],
    ['a plain error', new Error('boom')],
    ['not an error', undefined],
  ])('%s: neither', (_, error) => {
    expect(isDatabaseUnavailable(error)).toBe(false);
    expect(serverWentAway(error)).toBe(false);
  });

  it('reads the errors an AggregateError carries (dual-stack connects) as unavailable', () => {
    const aggregate = new AggregateError([pgError('ECONNREFUSED'), pgError('ETIMEDOUT')], 'connect failed');
    expect(isDatabaseUnavailable(aggregate)).toBe(true);
  });
});
