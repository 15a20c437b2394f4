import { errorText } from './error-text';

describe('errorText', () => {
  it('is the message when there is one', () => {
    expect(errorText(new Error('connect ECONNREFUSED 127.0.0.1:1'))).toBe('connect ECONNREFUSED 127.0.0.1:1');
  });

  it('falls back to the code, then to the first inner error, for errors without a message', () => {
    // What net.connect gives when every address of a dual-stack host refuses: an empty message.
    const refusals = Object.assign(new AggregateError([new Error('connect ECONNREFUSED ::1:1'), new Error('connect ECONNREFUSED 127.0.0.1:1')], ''), { code: 'ECONNREFUSED' });
    expect(errorText(refusals)).toBe('connect ECONNREFUSED ::1:1');
    expect(errorText(Object.assign(new Error(''), { code: 'ETIMEDOUT' }))).toBe('ETIMEDOUT');
    expect(errorText(Object.assign(new Error(''), { code: 'EHOSTUNREACH', errors: [new Error('connect EHOSTUNREACH 10.0.0.1:5432')] }))).toBe('connect EHOSTUNREACH 10.0.0.1:5432');
    expect(errorText(Object.assign(new Error(''), { code: 'ENETUNREACH', errors: [new Error('')] }))).toBe('ENETUNREACH');
    expect(errorText(Object.assign(new Error(''), { code: 'ECONNRESET', errors: [new Error('socket hang up')] }))).toBe('ECONNRESET (socket hang up)');
  });

  it('prints what was thrown when it is not an error', () => {
    expect(errorText('plain')).toBe('plain');
    expect(errorText(undefined)).toBe('undefined');
  });
});
