import { shutDownMirror } from './mirror.module';

/** The mirror's shutdown spends one budget over its two waits. */
describe('shutDownMirror', () => {
  function runtime(settle: { unsettled: number; tookMs: number }) {
    let clock = 0;
    const calls: string[] = [];
    const writerDeadlines: number[] = [];
    return {
      now: () => clock,
      calls,
      writerDeadlines,
      runtime: {
        mirror: {
          writesSettled: async (timeoutMs: number) => {
            calls.push(`writesSettled(${timeoutMs})`);
            clock += settle.tookMs;
            return settle.unsettled;
          },
        },
        writer: {
          shutdown: async (deadlineMs?: number) => {
            calls.push('writer.shutdown');
            writerDeadlines.push(deadlineMs!);
          },
        },
      },
    };
  }

  it('gives the writer what the wait for unsettled writes left of the budget', async () => {
    const r = runtime({ unsettled: 0, tookMs: 4_000 });
    const warnings: string[] = [];
    await shutDownMirror(r.runtime, 10_000, (m) => warnings.push(m), r.now);
    expect(r.calls).toEqual(['writesSettled(10000)', 'writer.shutdown']);
    expect(r.writerDeadlines).toEqual([6_000]);
    expect(warnings).toEqual([]);
  });

  it('gives the writer no time at all once the wait has spent the budget, and says which writes it gave up on', async () => {
    const r = runtime({ unsettled: 3, tookMs: 10_250 });
    const warnings: string[] = [];
    await shutDownMirror(r.runtime, 10_000, (m) => warnings.push(m), r.now);
    expect(r.writerDeadlines).toEqual([0]);
    expect(warnings).toEqual([expect.stringContaining('3 writes were still waiting on Postgres at shutdown')]);
    expect(warnings[0]).toContain('npm run verify -- --repair');
  });
});
