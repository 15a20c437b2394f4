/**
 * JSON.parse turns an integer past 2^53 into the nearest double, and a
 * span would store that without a word (12345678901234567891 is stored as
 * 12345678901234567000): Postgres and ClickHouse never see what was sent. So a JSON body is read for such integers before it is parsed, and
 * one is refused with a 400 that quotes it. Only integer literals: a number
 * written with a fraction or an exponent is a double by the sender's choice
 * and keeps what a double keeps (0.30000000000000004 is common and fine).
 */

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const MINUS = 0x2d;
const ZERO = 0x30;
/** Digits of the largest double, 1.7976931348623157e308: a longer integer is Infinity to JSON.parse. */
const MAX_DOUBLE_DIGITS = 309;
const isDigit = (byte: number) => byte >= 0x30 && byte <= 0x39;
/** What may follow a number's integer part: a fraction or an exponent, with their digits and signs. */
const isFractionOrExponent = (byte: number) => byte === 0x2e || byte === 0x65 || byte === 0x45 || byte === 0x2b || byte === MINUS || isDigit(byte);
/** Every integer below 2^53 (9007199254740992, 16 digits) is exact: shorter ones need no look. */
const SHORTEST_INEXACT_DIGITS = 16;

/** An integer literal JSON.parse would not keep, and the byte offset it starts at (its sign, when it has one). */
export interface InexactInteger {
  token: string;
  at: number;
}

/**
 * The first integer literal in a UTF-8 JSON text that JSON.parse would not
 * keep exactly (with its sign, as sent; cut after 310 digits), or null. One pass over the bytes that skips
 * strings (digits in them are text, and "12345678901234567891" is how to
 * send such a number). A regex would be shorter, but one that skips strings
 * recurses once per escape and overflows the stack on a long string of them.
 */
export function firstInexactInteger(body: Buffer): InexactInteger | null {
  for (let i = 0; i < body.length; i++) {
    const byte = body[i];
    if (byte === QUOTE) {
      i = closingQuote(body, i + 1);
      continue;
    }
    if (!isDigit(byte)) continue;
    let end = i;
    while (end < body.length && isDigit(body[end])) end++;
    // A leading zero is not JSON: the parser refuses that number itself.
    const integer = end - i >= SHORTEST_INEXACT_DIGITS && byte !== ZERO && !isFractionOrExponent(body[end] ?? 0);
    if (integer) {
      const sign = body[i - 1] === MINUS ? 1 : 0;
      // Past 309 digits every integer overflows a double: no need to read (or convert) a long run of digits.
      if (end - i > MAX_DOUBLE_DIGITS) return { token: body.toString('latin1', i - sign, i + MAX_DOUBLE_DIGITS + 1), at: i - sign };
      const token = body.toString('latin1', i - sign, end);
      if (storedAs(token) !== token) return { token, at: i - sign };
    }
    while (end < body.length && isFractionOrExponent(body[end])) end++;
    i = end - 1;
  }
  return null;
}

/** The index of the quote that closes a string whose text starts at `from` (the body's length when none does). */
function closingQuote(body: Buffer, from: number): number {
  for (let i = from; i < body.length; i++) {
    if (body[i] === BACKSLASH) i++;
    else if (body[i] === QUOTE) return i;
  }
  return body.length;
}

/**
 * What is stored for `token`, as a decimal integer: JSON.parse gives the
 * nearest double, and writing it out again gives that double's shortest
 * digits (what JSON.stringify and so Postgres's jsonb get). That is the
 * token itself for every integer below 2^53, and for a double a client
 * printed (JSON.stringify(2 ** 60) sends 1152921504606847000, and
 * -882642929372611300 comes back as -882642929372611300), but not for
 * 12345678901234567891, which comes back as 12345678901234567000, nor
 * for 2 ** 60 written exactly (1152921504606846976). JSON allows no
 * leading zeros, so a valid token is compared as it is.
 */
function storedAs(token: string): string {
  const shortest = String(Number(token));
  // Past 1e21 a double prints with an exponent: 1.2345678901234568e+21 is 1234567890123456800000.
  const exponent = /^(-?)(\d)(?:\.(\d+))?e\+(\d+)$/.exec(shortest);
  if (!exponent) return shortest;
  const [, sign, lead, fraction = '', power] = exponent;
  return sign + (lead + fraction).padEnd(Number(power) + 1, '0');
}

/** What the 400 says about `token`. */
export function inexactIntegerMessage(token: string): string {
  const cut = (digits: string) => (digits.length > 40 ? `${digits.slice(0, 40)}…` : digits);
  const stored = storedAs(token);
  if (!/^-?\d+$/.test(stored)) return `the integer ${cut(token)} is past the largest JSON number (about 1.8e308); send it as a string`;
  return `the integer ${cut(token)} would be stored as ${cut(stored)}: a JSON number keeps every integer exactly only up to 2^53 (9007199254740992); send it as a string`;
}

const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;

/**
 * Where in a JSON text the value starting at byte `at` sits, as keys and
 * indexes (["spans", 0, "attributes", "n"]), so a refusal can name the field.
 * Read only once a refusal is certain; the text has not been parsed yet and
 * may not be valid JSON, so a key that cannot be read gives null (the caller
 * then names the body).
 */
export function jsonPathAt(body: Buffer, at: number): (string | number)[] | null {
  const levels: Array<{ key: string | null } | { index: number }> = [];
  let lastString: [number, number] = [0, 0];
  for (let i = 0; i < at; i++) {
    const byte = body[i];
    if (byte === QUOTE) {
      const end = closingQuote(body, i + 1);
      lastString = [i, end + 1];
      i = end;
    } else if (byte === OPEN_OBJECT) levels.push({ key: null });
    else if (byte === OPEN_ARRAY) levels.push({ index: 0 });
    else if (byte === CLOSE_OBJECT || byte === CLOSE_ARRAY) levels.pop();
    else if (byte === COLON || byte === COMMA) {
      const level = levels[levels.length - 1];
      if (level === undefined) return null;
      if ('index' in level) level.index += byte === COMMA ? 1 : 0;
      else level.key = byte === COLON ? readKey(body, lastString) : null;
    }
  }
  const path: (string | number)[] = [];
  for (const level of levels) {
    if ('index' in level) path.push(level.index);
    else if (level.key === null) return null;
    else path.push(level.key);
  }
  return path;
}

function readKey(body: Buffer, [start, end]: [number, number]): string | null {
  try {
    const key: unknown = JSON.parse(body.toString('utf8', start, end));
    return typeof key === 'string' ? key : null;
  } catch {
    return null;
  }
}
