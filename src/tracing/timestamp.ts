/**
 * Timestamps travel as ISO-8601 strings with exactly six fractional digits in
 * UTC ("2026-11-22T10:00:00.123456Z"). A JS Date holds milliseconds only, so
 * these helpers do the microsecond part with string and bigint math.
 */

// The zone: Z, ±hh:mm, ±hhmm or ±hh (Postgres prints whole-hour offsets so: "2026-11-22 10:00:00+05").
const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}(?::?\d{2})?)$/;

/** The range both Postgres and ClickHouse's DateTime64(6) can hold. */
export const MIN_YEAR = 1900;
export const MAX_YEAR = 2299;

/** Normalizes any ISO-8601 timestamp with a zone to UTC microseconds, or null if invalid. */
export function normalizeTimestamp(text: string): string | null {
  const micros = parseTimestampMicros(text);
  return micros === null ? null : microsToIso(micros);
}

export function parseTimestampMicros(text: string): bigint | null {
  const m = ISO_RE.exec(text);
  if (!m) return null;
  const [, y, mo, d, h, mi, s, frac = '', zone] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  if (month < 1 || month > 12 || day < 1 || Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) return null;
  // Date.UTC reads years 0-99 as 1900-1999; a zone offset moves the year by one at most.
  if (year < MIN_YEAR - 1 || year > MAX_YEAR + 1) return null;
  const ms = Date.UTC(year, month - 1, day, Number(h), Number(mi), Number(s));
  const check = new Date(ms);
  if (check.getUTCDate() !== day || check.getUTCMonth() !== month - 1) return null; // e.g. Feb 30
  let offsetMinutes = 0;
  if (zone !== 'Z' && zone !== 'z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    const oh = Number(digits.slice(0, 2));
    const om = Number(digits.slice(2, 4)); // 0 for ±hh
    if (oh > 23 || om > 59) return null;
    offsetMinutes = sign * (oh * 60 + om);
  }
  const micros = BigInt(ms - offsetMinutes * 60_000) * 1000n + BigInt(frac.padEnd(6, '0').slice(0, 6));
  // Floored: 1899-12-31T23:59:59.9995Z truncated to milliseconds read as 1900.
  const utcYear = new Date(Number(floorMillis(micros))).getUTCFullYear();
  if (utcYear < MIN_YEAR || utcYear > MAX_YEAR) return null;
  return micros;
}

/** Milliseconds of a time in µs, floored: bigint division truncates toward zero, which before 1970 rounds up. */
const floorMillis = (micros: bigint): bigint => (micros < 0n && micros % 1000n !== 0n ? micros / 1000n - 1n : micros / 1000n);

export function microsToIso(micros: bigint): string {
  const base = new Date(Number(floorMillis(micros))).toISOString(); // 2026-11-22T10:00:00.123Z
  const fracMicros = ((micros % 1_000_000n) + 1_000_000n) % 1_000_000n;
  return `${base.slice(0, 19)}.${fracMicros.toString().padStart(6, '0')}Z`;
}

/** Microseconds since the epoch of a normalized timestamp; the mirror's row version. */
export function isoToMicros(iso: string): bigint {
  const micros = parseTimestampMicros(iso);
  if (micros === null) throw new Error(`not an ISO-8601 timestamp: "${iso}"`);
  return micros;
}
