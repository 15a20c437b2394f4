import type { GapRow } from './gap-ledger';

/**
 * Per row, in the records chain: fieldBytes (u32), lineBytes (u32),
 * enqueuedAt (f64, ms) and seq (f64), little-endian, then the gap fields.
 */
export const ROW_HEADER_BYTES = 24;

/** One allocation per this many bytes of rows instead of one per row, with little left unused at a segment's end. */
const SEGMENT_BYTES = 256 * 1024;

/**
 * Settled segments a log keeps for its next rows (8 MiB per table). A store
 * left to the garbage collector is freed only by a full collection, which
 * V8 runs seldom: with ClickHouse keeping up, a flag-on API under load held
 * ~37 MiB of settled stores and insert chunks beyond its ~4 MiB queue.
 */
const POOLED_SEGMENTS = 32;

const NEWLINE = 0x0a;

interface Segment {
  store: Buffer;
  /** Where the next run is written; bytes before it never change while the segment is in use. */
  end: number;
  /** Still part of its chain: it may hold untaken rows, or receive new ones. */
  inChain: boolean;
  /** Spans holding parts of it, not yet released. */
  spans: number;
}

/** A run of bytes in one segment: records back to back, or lines each ending in '\n'. */
interface Part {
  segment: Segment;
  start: number;
  end: number;
}

/**
 * Rows taken off the front of a log together (a batch). It can be read until
 * it is released: once per insert attempt, and for its gap rows if it fails.
 */
export interface RowSpan {
  readonly count: number;
  /** What the rows cost the queue's bound (recordBytes each). */
  readonly bytes: number;
  /** What flushBytes counts: the lines, without their newlines. */
  readonly lineBytes: number;
  readonly firstEnqueuedAt: number;
  readonly firstSeq: number;
  readonly records: readonly Part[];
  readonly lines: readonly Part[];
}

/** What a row costs the queue's bound: its header and gap fields, and its line with its newline. */
export function recordBytes(fieldBytes: number, lineBytes: number): number {
  return ROW_HEADER_BYTES + fieldBytes + lineBytes + 1;
}

/** Byte runs in order, in segments; runs are taken from the front. */
class Chain {
  private segments: Segment[] = [];
  /** Offset of the next untaken run in segments[0]. */
  private readAt = 0;

  constructor(
    private readonly allocate: (size: number) => Segment,
    private readonly leave: (segment: Segment) => void,
  ) {}

  /** Room for `size` bytes at the end; `empty` says nothing untaken is left, so old segments can go. */
  append(size: number, empty: boolean): { store: Buffer; at: number } {
    let tail = this.segments.at(-1);
    if (tail === undefined || tail.end + size > tail.store.length) {
      if (empty) {
        for (const segment of this.segments.splice(0)) this.leave(segment);
        this.readAt = 0;
      }
      tail = this.allocate(size);
      this.segments.push(tail);
    }
    const at = tail.end;
    tail.end += size;
    return { store: tail.store, at };
  }

  /** Where the next untaken run starts. Only called while one exists. */
  next(): { segment: Segment; at: number } {
    // Used up while it was the one being written; the next run went to a new segment.
    if (this.readAt === this.segments[0].end) this.shiftUsedUp();
    return { segment: this.segments[0], at: this.readAt };
  }

  /**
   * Room for `size` bytes that may run on into a new segment: the tail's room
   * first. For lines, only ever read as bytes: a line that did not fit the
   * tail's room used to start a segment of its own and leave that room
   * unused, so with lines of 128-256 KiB each segment held one line and the
   * queue's real memory neared twice what its bound counted.
   */
  appendSpanning(size: number, empty: boolean): Array<{ store: Buffer; at: number; length: number }> {
    const tail = this.segments.at(-1);
    // Nothing untaken (empty): append() lets the old segments go rather than filling the tail's room.
    if (tail === undefined || tail.end + size <= tail.store.length || empty) return [{ ...this.append(size, empty), length: size }];
    const room = tail.store.length - tail.end;
    const pieces = room > 0 ? [{ store: tail.store, at: tail.end, length: room }] : [];
    tail.end += room;
    const next = this.allocate(size - room);
    next.end = size - room;
    this.segments.push(next);
    pieces.push({ store: next.store, at: 0, length: size - room });
    return pieces;
  }

  /** Takes the next `size` bytes, which may run on into the next segment, adding them to `parts`. */
  take(size: number, parts: Part[]): void {
    while (size > 0) {
      const { segment, at } = this.next();
      const length = Math.min(size, segment.end - at);
      const last = parts.at(-1);
      if (last !== undefined && last.segment === segment && last.end === at) last.end = at + length;
      else {
        parts.push({ segment, start: at, end: at + length });
        segment.spans += 1;
      }
      this.readAt = at + length;
      size -= length;
      // Used up and not the one being written: it leaves now, so the span that read its last bytes frees it.
      if (this.readAt === segment.end && this.segments.length > 1) this.shiftUsedUp();
    }
  }

  private shiftUsedUp(): void {
    this.leave(this.segments.shift()!);
    this.readAt = 0;
  }
}

/**
 * One table's queued rows, oldest first, entirely off the V8 heap, in two
 * chains of 256 KiB segments: records (header and gap fields, JSON
 * [entity, projectId, key, createdAt, tombstoneFields]) and lines (each
 * with its newline, running on from one segment into the next where it
 * does not fit, so a batch's insert body is a few slices of segments, sent
 * without copying, and segments are filled to the end). A row used to be a
 * small heap object pointing into a store; with 30,000 of them queued
 * through an outage, V8 sized its old generation to a multiple of them,
 * memory the queue's bound could only estimate. Now the bound counts every
 * byte a queued row holds, and the heap holds one object per segment.
 *
 * Rows leave only from the front (take). Once a span is settled its caller
 * releases it, and segments no chain or span holds any more are reused.
 */
export class RowLog {
  private readonly pool: Segment[] = [];
  private readonly recordChain = new Chain(
    (size) => this.allocate(size),
    (segment) => this.leaveChain(segment),
  );
  private readonly lineChain = new Chain(
    (size) => this.allocate(size),
    (segment) => this.leaveChain(segment),
  );
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
    if (this.rowCount === 0) return NaN;
    const { segment, at } = this.recordChain.next();
    return segment.store.readDoubleLE(at + 8);
  }

  /** The oldest row's sequence; NaN when empty. */
  get firstSeq(): number {
    if (this.rowCount === 0) return NaN;
    const { segment, at } = this.recordChain.next();
    return segment.store.readDoubleLE(at + 16);
  }

  /** Copies the row in; the byte lengths are the caller's, measured once for the bound too. */
  append(fields: string, fieldBytes: number, line: string, lineBytes: number, enqueuedAt: number, seq: number): void {
    const empty = this.rowCount === 0;
    const record = this.recordChain.append(ROW_HEADER_BYTES + fieldBytes, empty);
    record.store.writeUInt32LE(fieldBytes, record.at);
    record.store.writeUInt32LE(lineBytes, record.at + 4);
    record.store.writeDoubleLE(enqueuedAt, record.at + 8);
    record.store.writeDoubleLE(seq, record.at + 16);
    record.store.write(fields, record.at + ROW_HEADER_BYTES, fieldBytes, 'utf8');
    const pieces = this.lineChain.appendSpanning(lineBytes + 1, empty);
    if (pieces.length === 1) {
      const [text] = pieces;
      text.store.write(line, text.at, lineBytes, 'utf8');
      text.store[text.at + lineBytes] = NEWLINE;
    } else {
      // Once per segment at most: encoded whole, then copied, so a character split between the two stays whole.
      const text = Buffer.allocUnsafe(lineBytes + 1);
      text.write(line, 0, lineBytes, 'utf8');
      text[lineBytes] = NEWLINE;
      let from = 0;
      for (const piece of pieces) from += text.copy(piece.store, piece.at, from, from + piece.length);
    }
    this.rowCount += 1;
    this.totalBytes += recordBytes(fieldBytes, lineBytes);
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
    const records: Part[] = [];
    const lines: Part[] = [];
    let count = 0;
    let bytes = 0;
    let lineBytes = 0;
    while (count < maxRows && count < this.rowCount) {
      const { segment, at } = this.recordChain.next();
      const fieldBytes = segment.store.readUInt32LE(at);
      const nextLineBytes = segment.store.readUInt32LE(at + 4);
      if (count > 0 && lineBytes + nextLineBytes > maxLineBytes) break;
      this.recordChain.take(ROW_HEADER_BYTES + fieldBytes, records);
      this.lineChain.take(nextLineBytes + 1, lines);
      count += 1;
      bytes += recordBytes(fieldBytes, nextLineBytes);
      lineBytes += nextLineBytes;
    }
    this.rowCount -= count;
    this.totalBytes -= bytes;
    this.totalLineBytes -= lineBytes;
    return { count, bytes, lineBytes, firstEnqueuedAt, firstSeq, records, lines };
  }

  /**
   * The span is settled and will not be read again: segments that neither a
   * chain nor another span holds any more are kept for new rows. The caller
   * must not release a span twice, nor while an insert may still read it
   * unless no row will be appended again (the writer's shutdown deadline).
   */
  release(span: RowSpan): void {
    for (const { segment } of [...span.records, ...span.lines]) {
      segment.spans -= 1;
      this.reuseIfFree(segment);
    }
  }

  private leaveChain(segment: Segment): void {
    segment.inChain = false;
    this.reuseIfFree(segment);
  }

  private reuseIfFree(segment: Segment): void {
    if (segment.inChain || segment.spans > 0 || segment.store.length !== SEGMENT_BYTES || this.pool.length >= POOLED_SEGMENTS) return;
    this.pool.push(segment);
  }

  private allocate(size: number): Segment {
    const pooled = size <= SEGMENT_BYTES ? this.pool.pop() : undefined;
    if (pooled) {
      pooled.end = 0;
      pooled.inChain = true;
      return pooled;
    }
    return { store: Buffer.allocUnsafeSlow(Math.max(SEGMENT_BYTES, size)), end: 0, inChain: true, spans: 0 };
  }
}

/** Calls `visit` with each record of the span, in order. */
function forEachRecord(span: RowSpan, visit: (store: Buffer, at: number, fieldBytes: number) => void): void {
  for (const { segment, start, end } of span.records) {
    const { store } = segment;
    for (let at = start; at < end; ) {
      const fieldBytes = store.readUInt32LE(at);
      visit(store, at, fieldBytes);
      at += ROW_HEADER_BYTES + fieldBytes;
    }
  }
}

/**
 * The span's lines, each ending in '\n', as slices of their segments: a few
 * per batch, whatever its row count. Read them before the span is released.
 */
export function* linesOf(span: RowSpan): Generator<Uint8Array> {
  for (const { segment, start, end } of span.lines) yield segment.store.subarray(start, end);
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
    const [entity, projectId, key, createdAt, tombstoneFields] = JSON.parse(store.toString('utf8', fieldsAt, fieldsAt + fieldBytes)) as [string, string, string[], string, string[]];
    rows.push({ table, entity, projectId, key, createdAt, tombstoneFields });
  });
  return rows;
}
