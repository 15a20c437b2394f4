import { linesOfBody } from '../../../test/support/insert-body';
import { forEachEnqueueTime, gapRowsOf, linesOf, recordBytes, ROW_HEADER_BYTES, RowLog, RowSpan } from './row-log';

/** Appends a row the way the writer does: gap fields as JSON, byte lengths measured once. */
function append(log: RowLog, id: number, line = `{"id":${id}}`, enqueuedAt = 1_000 + id): void {
  const fields = JSON.stringify(['spans', 'project-é', ['trace', `span-${id}`], `2026-11-22T00:00:00.${String(id).padStart(6, '0')}Z`, [`start-${id}`]]);
  log.append(fields, Buffer.byteLength(fields), line, Buffer.byteLength(line), enqueuedAt, id);
}

function lines(span: RowSpan): string[] {
  return linesOfBody(linesOf(span));
}

/** The stores a span's lines are in. */
const storesOf = (span: RowSpan) => new Set([...linesOf(span)].map((slice) => slice.buffer));

describe('RowLog', () => {
  it('is empty until a row is appended', () => {
    const log = new RowLog();
    expect(log.count).toBe(0);
    expect(log.bytes).toBe(0);
    expect(log.firstSeq).toBeNaN();
    expect(log.firstEnqueuedAt).toBeNaN();
    expect(log.take()).toBeNull();
  });

  it('gives rows back in order: lines as bytes, gap rows parsed, enqueue times, and what they cost', () => {
    const log = new RowLog();
    append(log, 1, '{"name":"ünïcode ✓"}', 50);
    append(log, 2, '{"id":2}', 60);
    const fields1 = JSON.stringify(['spans', 'project-é', ['trace', 'span-1'], '2026-11-22T00:00:00.000001Z', ['start-1']]);
    const fields2 = JSON.stringify(['spans', 'project-é', ['trace', 'span-2'], '2026-11-22T00:00:00.000002Z', ['start-2']]);
    const expectedBytes = recordBytes(Buffer.byteLength(fields1), Buffer.byteLength('{"name":"ünïcode ✓"}')) + recordBytes(Buffer.byteLength(fields2), 8);
    expect(log).toMatchObject({ count: 2, bytes: expectedBytes, lineBytes: Buffer.byteLength('{"name":"ünïcode ✓"}') + 8, firstSeq: 1, firstEnqueuedAt: 50 });

    const span = log.take()!;
    expect(span).toMatchObject({ count: 2, bytes: expectedBytes, firstSeq: 1, firstEnqueuedAt: 50 });
    expect(lines(span)).toEqual(['{"name":"ünïcode ✓"}', '{"id":2}']);
    expect(gapRowsOf('spans_table', span)).toEqual([
      { table: 'spans_table', entity: 'spans', projectId: 'project-é', createdAt: '2026-11-22T00:00:00.000001Z', key: ['trace', 'span-1'], tombstoneFields: ['start-1'] },
      { table: 'spans_table', entity: 'spans', projectId: 'project-é', createdAt: '2026-11-22T00:00:00.000002Z', key: ['trace', 'span-2'], tombstoneFields: ['start-2'] },
    ]);
    const times: number[] = [];
    forEachEnqueueTime(span, (t) => times.push(t));
    expect(times).toEqual([50, 60]);
    expect(log).toMatchObject({ count: 0, bytes: 0, lineBytes: 0 });
  });

  it('takes up to a row count and a line-byte limit, and a first row over the byte limit alone', () => {
    const log = new RowLog();
    for (let id = 1; id <= 5; id++) append(log, id, 'x'.repeat(10));
    append(log, 6, 'y'.repeat(100));
    append(log, 7, 'z'.repeat(10));

    expect(log.take(2)!.count).toBe(2);
    expect(log.firstSeq).toBe(3);
    const byBytes = log.take(Infinity, 25)!;
    expect(lines(byBytes)).toEqual(['x'.repeat(10), 'x'.repeat(10)]);
    expect(byBytes.lineBytes).toBe(20);
    const upToTheBigRow = log.take(Infinity, 25)!;
    expect(lines(upToTheBigRow)).toEqual(['x'.repeat(10)]);
    const alone = log.take(Infinity, 25)!;
    expect(lines(alone)).toEqual(['y'.repeat(100)]);
    expect(log).toMatchObject({ count: 1, firstSeq: 7 });
  });

  it('spans many stores, in order, and a taken span stays readable while more rows are written', () => {
    const log = new RowLog();
    const line = (id: number) => JSON.stringify({ id, pad: 'p'.repeat(3000 + (id % 7)) });
    // ~3 KB rows: a 256 KiB store holds ~85, so 400 rows cross several stores.
    for (let id = 1; id <= 400; id++) append(log, id, line(id));
    const first = log.take(250)!;
    // A few slices however many rows: the body is sent without copying.
    expect(first.lines.length).toBeGreaterThan(2);
    expect(first.lines.length).toBeLessThan(10);
    for (let id = 401; id <= 900; id++) append(log, id, line(id));
    const rest = log.take()!;

    expect(lines(first)).toEqual(Array.from({ length: 250 }, (_, i) => line(i + 1)));
    expect(lines(rest)).toEqual(Array.from({ length: 650 }, (_, i) => line(i + 251)));
    expect(gapRowsOf('t', rest).map((row) => row.key[1])).toEqual(Array.from({ length: 650 }, (_, i) => `span-${i + 251}`));
    expect(log).toMatchObject({ count: 0, bytes: 0, lineBytes: 0 });
  });

  it('fills its stores to the end: a line that does not fit the room left runs on into the next store, characters whole', () => {
    const log = new RowLog();
    // Lines of ~140 KB (two-byte characters, one byte of padding to put a character across the boundary):
    // one store held one line before, leaving ~120 KB of it unused, so memory neared twice the bound.
    const line = (id: number) => JSON.stringify({ id, text: 'é'.repeat(70_000) });
    for (let id = 1; id <= 4; id++) append(log, id, line(id));
    const span = log.take()!;
    expect(lines(span)).toEqual([1, 2, 3, 4].map(line));
    const lineBytes = [1, 2, 3, 4].reduce((sum, id) => sum + Buffer.byteLength(line(id)) + 1, 0);
    expect(storesOf(span).size).toBe(Math.ceil(lineBytes / (256 * 1024)));
  });

  it('holds a row bigger than a store: from the room left in the last store on into one of its own', () => {
    const log = new RowLog();
    append(log, 1);
    const huge = JSON.stringify({ big: 'b'.repeat(600 * 1024) });
    append(log, 2, huge);
    append(log, 3);
    expect(lines(log.take()!)).toEqual(['{"id":1}', huge, '{"id":3}']);
  });

  it('counts the header, the gap fields and the line with its newline of every row against the bound', () => {
    expect(recordBytes(40, 2000)).toBe(ROW_HEADER_BYTES + 40 + 2000 + 1);
  });

  it('reuses the stores of released spans, and never those of a span still held', () => {
    const log = new RowLog();
    const line = (id: number) => JSON.stringify({ id, pad: 'q'.repeat(4000) });
    for (let id = 1; id <= 300; id++) append(log, id, line(id));
    const held = log.take(100)!;
    const released = log.take(100)!;
    const releasedStores = storesOf(released);
    log.release(released);
    // Enough new rows to need every pooled store and more.
    for (let id = 301; id <= 900; id++) append(log, id, line(id));
    const later = log.take()!;

    expect(lines(held)).toEqual(Array.from({ length: 100 }, (_, i) => line(i + 1)));
    expect(lines(later)).toEqual(Array.from({ length: 700 }, (_, i) => line(i + 201)));
    const laterStores = storesOf(later);
    // The released span's stores that the log had let go of came back for new rows; the held span's did not.
    expect([...releasedStores].filter((store) => laterStores.has(store)).length).toBeGreaterThan(0);
    for (const store of storesOf(held)) {
      if (!releasedStores.has(store)) expect(laterStores.has(store)).toBe(false);
    }
  });
});
