/** Characters per piece: big enough that per-chunk costs vanish, small enough to stay cheap to build. */
const PIECE_CHARS = 256 * 1024;

/**
 * An insert body built as rows are mapped: lines are joined into pieces of
 * a few hundred KB right away (the sink ends each piece with a newline, so
 * the bytes are the same JSONEachRow). Each line dies young instead of
 * living until the insert, and the request streams a few large chunks
 * instead of one per row; both are most of the per-row cost otherwise.
 */
export class JsonLinesBody {
  readonly pieces: string[] = [];
  rows = 0;
  /** UTF-8 bytes of the body, newlines included: what the batch byte limit counts. */
  bytes = 0;
  private pending: string[] = [];
  private pendingChars = 0;

  add(line: string, bytes: number = Buffer.byteLength(line) + 1): void {
    this.pending.push(line);
    this.pendingChars += line.length + 1;
    this.rows += 1;
    this.bytes += bytes;
    if (this.pendingChars >= PIECE_CHARS) this.flush();
  }

  /** The body's pieces, ready for ClickHouseHistory.insert. */
  finish(): string[] {
    this.flush();
    return this.pieces;
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    this.pieces.push(this.pending.join('\n'));
    this.pending = [];
    this.pendingChars = 0;
  }
}
