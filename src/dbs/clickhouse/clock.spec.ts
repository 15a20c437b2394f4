import { realClock } from './clock';

describe('realClock', () => {
  afterEach(() => jest.restoreAllMocks());

  it('reads epoch milliseconds', () => {
    expect(Math.abs(realClock.now() - Date.now())).toBeLessThan(1_000);
  });

  it('does not go back when the wall clock is stepped back; wallNow, for times shown, follows the wall clock', () => {
    const before = realClock.now();
    jest.spyOn(Date, 'now').mockReturnValue(before - 3_600_000);
    expect(realClock.now()).toBeGreaterThanOrEqual(before);
    expect(realClock.wallNow()).toBe(before - 3_600_000);
  });
});
