/**
 * Postgres prints jsonb with a space after every ':' and ',' ({"a": [1, 2]}),
 * while the row mappers write JSON.stringify's compact text ({"a":[1,2]}),
 * and a mirrored row and a copied one must be the same line. This turns a
 * jsonb value, as COPY's text format prints it (backslashes doubled), into
 * the text JSON.stringify(JSON.parse(value)) gives, escaped the same way.
 *
 * The fast path drops the spaces between tokens and reprints each number
 * as JavaScript does (1.50 -> 1.5, -0 -> 0, 1000000000000000000000 ->
 * 1e+21). Where JSON.stringify would change more than that (a key
 * JavaScript orders first, such as "10") the value goes through JSON.parse
 * and JSON.stringify, exactly as the mapper does.
 *
 * Why spaces are the only difference otherwise: jsonb's output escapes
 * exactly what JSON.stringify escapes (", \, and control characters, with
 * the same short forms and lowercase \u00xx), prints non-ASCII characters
 * as they are, never holds lone surrogates or duplicate keys, and the key
 * order JSON.parse keeps is the order Postgres printed.
 */

const SPACE = 0x20;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const MINUS = 0x2d;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
/** Keys JavaScript orders before all others (array indices): "0", "7", "10", ... */
const INDEX_KEY = /^(?:0|[1-9][0-9]*)$/;

/** `\N` (NULL) passes through; any other field is a jsonb value in COPY text format. */
export function compactJsonbField(field: string): string {
  if (field === '\\N') return field;
  return compactFast(field) ?? viaJavaScript(field);
}

/** The value without inter-token spaces and with JavaScript's numbers, or null when JSON.stringify would change more than that. */
function compactFast(text: string): string | null {
  let out = '';
  let from = 0;
  const n = text.length;
  // Strings are most of the text: jump through them with indexOf, remembering where the next backslash is.
  let nextBackslash = text.indexOf('\\');
  if (nextBackslash < 0) nextBackslash = n;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      const start = i + 1;
      i = start;
      for (;;) {
        const quote = text.indexOf('"', i);
        if (quote < 0) throw new Error('unterminated JSON string in a jsonb field');
        if (quote < nextBackslash) {
          i = quote + 1;
          break;
        }
        // COPY doubles every backslash: a JSON escape is "\\" then its letter, or "\\\\" for an escaped backslash.
        i = nextBackslash + 2;
        i += text.charCodeAt(i) === BACKSLASH ? 2 : 1;
        nextBackslash = text.indexOf('\\', i);
        if (nextBackslash < 0) nextBackslash = n;
      }
      // A key is a string followed by ':' (Postgres prints no space before it).
      if (text.charCodeAt(i) === COLON && INDEX_KEY.test(text.slice(start, i - 1))) return null;
    } else if (c === SPACE) {
      out += text.slice(from, i);
      i += 1;
      from = i;
    } else if (c === MINUS || (c >= DIGIT_0 && c <= DIGIT_9)) {
      const start = i;
      while (i < n && isNumberChar(text.charCodeAt(i))) i++;
      const token = text.slice(start, i);
      const value = Number(token);
      const printed = Number.isFinite(value) ? String(value) : 'null';
      if (printed !== token) {
        // JSON.parse reads the token as Number() does; JSON.stringify prints String(value), or null past a double's range.
        out += text.slice(from, start) + printed;
        from = i;
      }
    } else {
      i += 1;
    }
  }
  return from === 0 ? text : out + text.slice(from);
}

function isNumberChar(c: number): boolean {
  // 0-9 . - + e E
  return (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x2b || c === 0x65 || c === 0x45;
}

function viaJavaScript(field: string): string {
  return escapeCopyText(JSON.stringify(JSON.parse(unescapeCopyText(field))));
}

/** COPY's text format escapes, by the letter after the backslash: what Postgres writes for text. */
const COPY_ESCAPES: Record<string, string> = { b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\' };
/** The same escapes the other way: character to its two-character escape. */
const ESCAPED: Record<string, string> = Object.fromEntries(Object.entries(COPY_ESCAPES).map(([letter, c]) => [c, `\\${letter}`]));

/** COPY's text format to the value: backslash escapes (Postgres writes only these for text). */
export function unescapeCopyText(field: string): string {
  return field.replace(/\\(.)/g, (_, c: string) => {
    const value = COPY_ESCAPES[c];
    if (value === undefined) throw new Error(`unexpected escape \\${c} in COPY text`);
    return value;
  });
}

/** The value in ClickHouse's TabSeparated escaping, which reads Postgres's COPY escapes too. */
export function escapeCopyText(value: string): string {
  return value.replace(/[\\\t\n\r\b\f\v]/g, (c) => ESCAPED[c]);
}
