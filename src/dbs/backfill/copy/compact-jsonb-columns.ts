import { StringDecoder } from 'node:string_decoder';
import { Transform, TransformCallback } from 'node:stream';
import { compactJsonbField } from './jsonb-text';

const TAB = '\t';
const NEWLINE = '\n';

/**
 * Between Postgres's COPY output and ClickHouse's TabSeparated input: makes
 * the trailing `jsonColumns` fields of every line compact JSON (see
 * jsonb-text.ts) and passes the rest through untouched. Lines are cut at
 * newlines, which COPY's text format never leaves inside a field; a line
 * without the expected fields fails the stream (and so the insert) rather
 * than reaching ClickHouse shifted.
 */
export class CompactJsonbColumns extends Transform {
  private readonly decoder = new StringDecoder('utf8');
  /**
   * The line begun but not ended, in the pieces it arrived in. Only each new
   * piece is searched for a newline: appending to one string and searching
   * it all again cost time growing with the square of a line's length (a
   * 32 MB line in 64 KiB chunks took 11 s).
   */
  private partial: string[] = [];
  private readonly plainColumns: number;
  /** Lines passed through so far. */
  lines = 0;

  constructor(
    private readonly columns: number,
    private readonly jsonColumns: number,
  ) {
    super({ decodeStrings: true, readableHighWaterMark: 1 << 20 });
    this.plainColumns = columns - jsonColumns;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    const piece = this.decoder.write(chunk);
    const end = piece.lastIndexOf(NEWLINE);
    if (end < 0) {
      if (piece.length > 0) this.partial.push(piece);
      return done();
    }
    const begun = this.partial.join('');
    this.partial = end + 1 < piece.length ? [piece.slice(end + 1)] : [];
    this.rewrite(begun + piece, begun.length + end + 1, done);
  }

  override _flush(done: TransformCallback): void {
    const rest = this.partial.join('') + this.decoder.end();
    this.partial = [];
    if (rest.length === 0) return done();
    this.rewrite(`${rest}${NEWLINE}`, rest.length + 1, done);
  }

  /** Rewrites the whole lines in text[0, end) and pushes them as one chunk. */
  private rewrite(text: string, end: number, done: TransformCallback): void {
    let out = '';
    try {
      for (let start = 0; start < end; ) {
        const newline = text.indexOf(NEWLINE, start);
        out += this.line(text, start, newline);
        this.lines++;
        start = newline + 1;
      }
    } catch (error) {
      return done(error as Error);
    }
    done(null, out);
  }

  /** One line, text[start, newline), with its newline. */
  private line(text: string, start: number, newline: number): string {
    let tab = start - 1;
    for (let i = 0; i < this.plainColumns; i++) {
      tab = text.indexOf(TAB, tab + 1);
      if (tab < 0 || tab > newline) throw this.malformed(text.slice(start, newline));
    }
    let out = text.slice(start, tab + 1);
    for (let i = 0; i < this.jsonColumns; i++) {
      const last = i === this.jsonColumns - 1;
      const next = last ? newline : text.indexOf(TAB, tab + 1);
      if (next < 0 || next > newline || (last && text.lastIndexOf(TAB, newline) !== tab)) throw this.malformed(text.slice(start, newline));
      out += compactJsonbField(text.slice(tab + 1, next)) + (last ? NEWLINE : TAB);
      tab = next;
    }
    return out;
  }

  private malformed(line: string): Error {
    return new Error(`COPY line without the ${this.columns} expected fields: ${line.slice(0, 200)}`);
  }
}
