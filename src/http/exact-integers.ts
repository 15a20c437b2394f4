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

/**
 * The first integer literal in a UTF-8 JSON text that JSON.parse would not
 * keep exactly (with its sign, as sent; cut after 310 digits), or null. One pass over the bytes that skips
 * strings (digits in them are text, and "12345678901234567891" is how to
 * send such a number). A regex would be shorter, but one that skips strings
 * recurses once per escape and overflows the stack on a long string of them.
 */
export function firstInexactInteger(body: Buffer): string | null {
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
      if (end - i > MAX_DOUBLE_DIGITS) return body.toString('latin1', i - sign, i + MAX_DOUBLE_DIGITS + 1);
      const token = body.toString('latin1', i - sign, end);
      if (storedAs(token) !== token) return token;
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
