import { createHash } from 'node:crypto';
import { InvalidQueryError } from '../../tracing/span-query';
import { parseTimestampMicros } from '../../tracing/timestamp';

/**
 * The opaque cursor of a keyset page (span queries, node queries):
 * base64url of JSON [1, issuedFor, ...position]. `issuedFor` names the query
 * kind (and order) the cursor was issued under and, after the last colon, a
 * digest of what selects the rows (filter, window; see cursorTag), so it
 * cannot be replayed under another: a page asked with another filter would
 * start at a position that filter never reached, leaving out its rows
 * without a word. The position holds the last row's keys, times as the
 * microsecond text Postgres returned, never a JS Date.
 */
const CURSOR_VERSION = 1;

/**
 * `kind` and a digest of `selection`, for encodeCursor and decodeCursor.
 * Keys in any order give the same digest, and so does a selection's own
 * entry absent or null (a client looping on `next` sends what it left out
 * as null); inside a value (a filter's JSON) null stays itself. The page
 * size is not part of it, and may change between pages.
 */
export function cursorTag(kind: string, selection: Record<string, unknown>): string {
  const given = Object.entries(selection).filter(([, value]) => value !== undefined && value !== null);
  return `${kind}:${createHash('sha256').update(canonicalJson(Object.fromEntries(given))).digest('base64url').slice(0, DIGEST_LENGTH)}`;
}

const DIGEST_LENGTH = 12;
const DIGEST = new RegExp(`:[A-Za-z0-9_-]{${DIGEST_LENGTH}}$`);

/** JSON with every object's keys sorted; undefined properties left out, as JSON.stringify does. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => (item === undefined ? 'null' : canonicalJson(item))).join(',')}]`;
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
  return `{${entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

const kindOf = (tag: string) => tag.replace(DIGEST, '');
const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

export function encodeCursor(issuedFor: string, position: Array<string | null>): string {
  return Buffer.from(JSON.stringify([CURSOR_VERSION, issuedFor, ...position]), 'utf8').toString('base64url');
}

/**
 * The position a cursor holds, or an InvalidQueryError naming `field`: for
 * text that is not a cursor this API issued (its position fails
 * `isPosition`), and for one issued under another query kind or order.
 */
export function decodeCursor<Position extends unknown[]>(
  next: string,
  field: string,
  issuedFor: string,
  isPosition: (position: unknown[]) => position is Position,
): Position {
  const invalid = () => new InvalidQueryError(field, 'not a cursor returned by this API');
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(next, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (!Array.isArray(payload) || payload[0] !== CURSOR_VERSION || typeof payload[1] !== 'string') throw invalid();
  const [, issued, ...position] = payload as unknown[];
  if (issued !== issuedFor) {
    if (!DIGEST.test(issued as string)) {
      // Issued before cursors carried their selection's digest.
      throw new InvalidQueryError(field, 'the cursor was issued by an earlier version of this API; start again without it');
    }
    if (kindOf(issued as string) !== kindOf(issuedFor)) {
      throw new InvalidQueryError(field, `the cursor belongs to another kind of query, focus or order (${kindOf(issued as string).slice(0, 40)}); start again without it`);
    }
    throw new InvalidQueryError(field, 'the cursor continues a query with another filter or window: send the same filter and window as the page that returned it, or start again without it');
  }
  if (!isPosition(position)) throw invalid();
  return position;
}

/** Whether a cursor's time is the microsecond text a cursor is written with. */
export function isCursorTime(value: unknown): value is string {
  return typeof value === 'string' && CURSOR_TIME.test(value) && parseTimestampMicros(value) !== null;
}
