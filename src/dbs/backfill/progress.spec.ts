import { PassThrough } from 'node:stream';
import { createProgress } from './progress';

describe('history progress', () => {
  afterEach(() => jest.restoreAllMocks());

  it('off a terminal, raises its total to the rows done when writes landed in the range after it was counted', () => {
    let now = 1_000_000;
    jest.spyOn(Date, 'now').mockImplementation(() => now);
    const lines: string[] = [];
    const progress = createProgress(Object.assign(new PassThrough(), { isTTY: false }) as unknown as NodeJS.WriteStream, (line) => lines.push(line));
    progress.start('spans', 1000);
    now += 6_000;
    progress.advance(600, ['a']);
    now += 6_000;
    progress.advance(500, ['b']);
    expect(lines).toEqual([
      'backfill progress entity=spans rows=600 total=1000 percent=60.0 rows_per_s=100 cursor=a',
      'backfill progress entity=spans rows=1100 total=1100 percent=100.0 rows_per_s=92 cursor=b',
    ]);
  });

  it('on a terminal, shows a range with nothing left to copy as done, not 0 of 1', () => {
    let printed = '';
    const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 200 });
    terminal.on('data', (chunk: Buffer) => (printed += chunk.toString()));
    const progress = createProgress(terminal as unknown as NodeJS.WriteStream, () => undefined);
    progress.start('nodes', 0);
    progress.stop();
    expect(printed).toContain('100% | 0/0 rows');
    expect(printed).not.toContain('0/1 rows');
  });
});
