import type { GapRow } from './batch-writer';

/**
 * Per row, ahead of its gap fields and line: fieldBytes (u32), lineBytes
 * (u32), enqueuedAt (f64, ms) and seq (f64), little-endian.
 */
export const ROW_HEADER_BYTES = 24;

/** One allocation per this many bytes of rows instead of one per row, with little left unused at a segment's end. */
const SEGMENT_BYTES = 256 * 1024;

interface Segment {
  store: Buffer;
  /** Where the next row is written; bytes before it never change. */
  end: number;
}

/** A run of records back to back in one store. */
interface Part {
  store: Buffer;
  start: number;
  end: number;
}

/**
 * Rows taken off the front of a log together (a batch). It keeps its stores
 * alive, and they never change once written, so it can be read for as long
 * as it is held: once per insert attempt, and for its gap rows if it fails.
 */
export interface RowSpan {
  readonly count: number;
  /** What the rows cost the queue's bound: header, gap fields and line, each. */
  readonly bytes: number;
  /** What flushBytes counts: the lines alone. */
  readonly lineBytes: number;
  readonly firstEnqueuedAt: number;
  readonly firstSeq: number;
  readonly parts: readonly Part[];
}

/** What a row costs the queue's bound. */
export function recordBytes(fieldBytes: number, lineBytes: number): number {
  return ROW_HEADER_BYTES + fieldBytes + lineBytes;
}

/**
 * One table's queued rows, oldest first, entirely off the V8 heap: each row
 * is a record (header, gap fields as JSON [entity, projectId, createdAt,
 * ...key], line) appended to 256 KiB stores. A row used to be a small heap
 * object pointing into a store; with 30,000 of them queued through an
 * outage, V8 sized its old generation to a multiple of them, memory the
 * queue's bound could only estimate. Now the bound counts every byte a
 * queued row holds, and the heap holds one object per store.
 *
 * Rows leave only from the front (take), so a store is dropped from the log
 * once every row in it is taken, and freed once the spans holding it are.
 */
export class RowLog {
  private segments: Segment[] = [];
  /** Offset of the first untaken record in segments[0]; while any is untaken, it is before that segment's end. */
  private readAt = 0;
  private rowCount = 0;
  private totalBytes = 0;
  private totalLineBytes = 0;

  get count(): number {
    return this.rowCount;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get lineBytes(): number {
    return this.totalLineBytes;
  }

  /** The oldest row's enqueue time; NaN when empty. */
  get firstEnqueuedAt(): number {
    return this.rowCount === 0 ? NaN : this.segments[0].store.readDoubleLE(this.readAt + 8);
  }

  /** The oldest row's sequence; NaN when empty. */
  get firstSeq(): number {
    return this.rowCount === 0 ? NaN : this.segments[0].store.readDoubleLE(this.readAt + 16);
  }

  /** Copies the row in; the byte lengths are the caller's, measured once for the bound too. */
  append(fields: string, fieldBytes: number, line: string, lineBytes: number, enqueuedAt: number, seq: number): void {
    const size = recordBytes(fieldBytes, lineBytes);
    let tail = this.segments.at(-1);
    if (tail === undefined || tail.end + size > tail.store.length) {
      tail = { store: Buffer.allocUnsafeSlow(Math.max(SEGMENT_BYTES, size)), end: 0 };
      if (this.rowCount === 0) {
        // Nothing untaken is left in the old stores; spans that hold them keep them alive.
        this.segments = [];
        this.readAt = 0;
      }
      this.segments.push(tail);
    }
    const { store } = tail;
    const at = tail.end;
    store.writeUInt32LE(fieldBytes, at);
    store.writeUInt32LE(lineBytes, at + 4);
    store.writeDoubleLE(enqueuedAt, at + 8);
    store.writeDoubleLE(seq, at + 16);
    store.write(fields, at + ROW_HEADER_BYTES, fieldBytes, 'utf8');
    store.write(line, at + ROW_HEADER_BYTES + fieldBytes, lineBytes, 'utf8');
    tail.end += size;
    this.rowCount += 1;
    this.totalBytes += size;
    this.totalLineBytes += lineBytes;
  }

  /**
   * Takes rows from the front up to `maxRows` and `maxLineBytes` of lines; a
   * first row larger than `maxLineBytes` still goes alone. Null when empty.
   */
  take(maxRows = Infinity, maxLineBytes = Infinity): RowSpan | null {
    if (this.rowCount === 0) return null;
    const firstEnqueuedAt = this.firstEnqueuedAt;
    const firstSeq = this.firstSeq;
    const parts: Part[] = [];
    let rows = 0;
    let bytes = 0;
    let lineBytes = 0;
    while (rows < maxRows && rows < this.rowCount) {
      const segment = this.segments[0];
      const at = this.readAt;
      const fieldBytes = segment.store.readUInt32LE(at);
      const nextLineBytes = segment.store.readUInt32LE(at + 4);
      if (rows > 0 && lineBytes + nextLineBytes > maxLineBytes) break;
      const size = recordBytes(fieldBytes, nextLineBytes);
      const last = parts.at(-1);
      if (last !== undefined && last.store === segment.store) last.end = at + size;
      else parts.push({ store: segment.store, start: at, end: at + size });
      rows += 1;
      bytes += size;
      lineBytes += nextLineBytes;
      this.readAt = at + size;
      // A fully taken store leaves the log, unless it is the one still being written.
      if (this.readAt === segment.end && this.segments.length > 1) {
        this.segments.shift();
        this.readAt = 0;
      }
    }
    this.rowCount -= rows;
    this.totalBytes -= bytes;
    this.totalLineBytes -= lineBytes;
    return { count: rows, bytes, lineBytes, firstEnqueuedAt, firstSeq, parts };
  }
}

/** Calls `visit` with each record of the span, in order. */
function forEachRecord(span: RowSpan, visit: (store: Buffer, at: number, fieldBytes: number, lineBytes: number) => void): void {
  for (const { store, start, end } of span.parts) {
    for (let at = start; at < end; ) {
      const fieldBytes = store.readUInt32LE(at);
      const lineBytes = store.readUInt32LE(at + 4);
      visit(store, at, fieldBytes, lineBytes);
      at += recordBytes(fieldBytes, lineBytes);
    }
  }
}

/** The span's lines as views of their stores: nothing is copied or decoded until the sink reads them. */
export function* linesOf(span: RowSpan): Generator<Uint8Array> {
  for (const { store, start, end } of span.parts) {
    for (let at = start; at < end; ) {
      const fieldBytes = store.readUInt32LE(at);
      const lineBytes = store.readUInt32LE(at + 4);
      const lineStart = at + ROW_HEADER_BYTES + fieldBytes;
      yield store.subarray(lineStart, lineStart + lineBytes);
      at = lineStart + lineBytes;
    }
  }
}

/** Calls `visit` with each row's enqueue time, for the lag histogram. */
export function forEachEnqueueTime(span: RowSpan, visit: (enqueuedAt: number) => void): void {
  forEachRecord(span, (store, at) => visit(store.readDoubleLE(at + 8)));
}

/** The span's rows as gap rows, read back from their gap fields when they will not be sent. */
export function gapRowsOf(table: string, span: RowSpan): GapRow[] {
  const rows: GapRow[] = [];
  forEachRecord(span, (store, at, fieldBytes) => {
    const fieldsAt = at + ROW_HEADER_BYTES;
    const [entity, projectId, createdAt, ...key] = JSON.parse(store.toString('utf8', fieldsAt, fieldsAt + fieldBytes)) as string[];
    rows.push({ table, entity, projectId, key, createdAt });
  });
  return rows;
}
