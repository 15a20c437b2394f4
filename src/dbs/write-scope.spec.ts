import { currentWriteScope, runInWriteScope, WriteScope } from './write-scope';

describe('WriteScope', () => {
  it('runs every listener once, whatever one throws, then throws the first fault', () => {
    const scope = new WriteScope(null);
    const heard: string[] = [];
    scope.onEnd(() => heard.push('first'));
    scope.onEnd(() => {
      throw new Error('a listener bug');
    });
    scope.onEnd((outcome) => heard.push(`third: ${JSON.stringify(outcome)}`));
    expect(() => scope.end({ committed: true })).toThrow('a listener bug');
    expect(heard).toEqual(['first', 'third: {"committed":true}']);
    scope.end({ committed: true });
    expect(heard).toHaveLength(2);
  });

  it('is the current scope inside its work, across awaits, and not outside it', async () => {
    const scope = new WriteScope(null);
    expect(currentWriteScope()).toBeUndefined();
    const seen = await runInWriteScope(scope, async () => {
      await new Promise((done) => setTimeout(done, 1));
      return currentWriteScope();
    });
    expect(seen).toBe(scope);
    expect(currentWriteScope()).toBeUndefined();
  });
});
