import fc from 'fast-check';
import { firstInexactInteger, inexactIntegerMessage, jsonPathAt } from './exact-integers';

const first = (text: string) => firstInexactInteger(Buffer.from(text))?.token ?? null;

/** The reference: JSON.parse then JSON.stringify gives back the same integer (compared as numbers: 1e+21 is 1000000000000000000000). */
function storedAsSent(literal: string): boolean {
  const printed = JSON.stringify(JSON.parse(literal));
  const [mantissa, power = '0'] = printed.split('e');
  const [whole, fraction = ''] = mantissa.split('.');
  return BigInt(whole + fraction) * 10n ** BigInt(Number(power) - fraction.length) === BigInt(literal);
}

describe('firstInexactInteger', () => {
  it('finds an integer literal JSON.parse would round, with its sign', () => {
    expect(first('{"n":9007199254740993}')).toBe('9007199254740993');
    expect(first('{"a":[1,2,{"b":-12345678901234567891}]}')).toBe('-12345678901234567891');
    expect(first('[12345678901234567891,9007199254740993]')).toBe('12345678901234567891');
    // A double's exact value is not what is stored either: its shortest digits are (…300, not …328).
    expect(first('[-882642929372611328]')).toBe('-882642929372611328');
    expect(first('[18446744073709551616]')).toBe('18446744073709551616'); // 2^64 exactly, stored as 18446744073709552000
    expect(first('{"n":' + '9'.repeat(400) + '}')).toBe('9'.repeat(310)); // cut: past 309 digits any integer overflows
    expect(first('{"n":-' + '1'.repeat(309) + '}')).toBe(`-${'1'.repeat(309)}`);
  });

  it('gives the byte offset the integer starts at, sign included', () => {
    expect(firstInexactInteger(Buffer.from('{"é":-12345678901234567891}'))).toEqual({ token: '-12345678901234567891', at: 6 });
  });

  it('passes integers stored as sent: below 2^53, and past it the digits a client prints for a double', () => {
    const printed = [2 ** 60, -882642929372611300, 1e20, 2 ** 64].map((n) => JSON.stringify(n));
    expect(printed).toEqual(['1152921504606847000', '-882642929372611300', '100000000000000000000', '18446744073709552000']);
    for (const exact of ['9007199254740991', '9007199254740992', '-9007199254740992', '1000000000000000000000', '1234567890123456800000', '0', '-0', ...printed]) {
      expect(first(`{"n":${exact}}`)).toBeNull();
    }
  });

  it('leaves fractions and exponents alone: the sender wrote a double', () => {
    expect(first('[0.30000000000000004, 12345678901234567891.5, 12345678901234567891e0, 1.5e12345678901234567891, 1E-12345678901234567891, 1e+12345678901234567891]')).toBeNull();
  });

  it('reads digits in strings and keys as text, across escaped quotes and backslashes', () => {
    expect(first('{"12345678901234567891":"12345678901234567891"}')).toBeNull();
    expect(first('{"a":"x\\"12345678901234567891\\"","b":"\\\\"}')).toBeNull();
    expect(first('{"a":"\\\\","b":12345678901234567891}')).toBe('12345678901234567891');
    expect(first('{"a":"\\u0022 12345678901234567891"}')).toBeNull();
  });

  it('reads a body of 10 MB of digits in well under the 10 s that BigInt of a long token took', () => {
    for (const digits of ['1'.repeat(10_000_000), '1'.repeat(309), '12345678901234567891'.repeat(15)]) {
      const started = performance.now();
      // A token is read up to 310 digits: past 309 every integer overflows a double.
      expect(first(`[${digits}]`)).toBe(digits.slice(0, 310));
      // Tens of milliseconds when the machine is idle; the bound leaves room for a loaded 2-core CI.
      expect(performance.now() - started).toBeLessThan(3_000);
    }
  });

  it('leaves a number with a leading zero to the parser, which refuses it as not JSON', () => {
    expect(first('[01234567890123456789]')).toBeNull();
    // 10^300 is a double whose shortest digits are 1e+300: stored as sent.
    expect(first(`[1${'0'.repeat(300)}]`)).toBeNull();
  });

  it('skips a long string of escapes without running out of stack (a regex that skips strings would not)', () => {
    const text = JSON.stringify({ a: '\\"'.repeat(2_000_000) }).replace(/}$/, ',"b":12345678901234567891}');
    expect(first(text)).toBe('12345678901234567891');
  });

  it('agrees with a JSON.parse and JSON.stringify round trip on generated documents: null exactly when every integer literal survives it', () => {
    // Integers of every size around 2^53 and beyond, placed as numbers or inside strings among arbitrary JSON.
    const integer = fc.bigInt({ min: -(10n ** 25n), max: 10n ** 25n }).chain((n) => fc.constantFrom(n, 2n ** 53n + n % 1000n, -(2n ** 53n) + n % 1000n));
    const piece = fc.oneof(
      integer.map((n) => ({ text: n.toString(), literal: n.toString() })),
      integer.map((n) => ({ text: JSON.stringify(`${n}`), literal: null })),
      fc.jsonValue().map((v) => ({ text: JSON.stringify(v), literal: null })),
      fc.string().map((s) => ({ text: JSON.stringify({ [s]: s }), literal: null })),
    );
    let refused = 0;
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 12 }), (pieces) => {
        const text = `[${pieces.map((p) => p.text).join(',')}]`;
        const expected = pieces.find((p) => p.literal !== null && !storedAsSent(p.literal))?.literal ?? null;
        expect(first(text)).toBe(expected);
        if (expected !== null) refused++;
      }),
      { numRuns: 500 },
    );
    expect(refused).toBeGreaterThan(100); // both answers were put to the test
  });
});

describe('inexactIntegerMessage', () => {
  it('says what the integer would become and what to send instead', () => {
    expect(inexactIntegerMessage('12345678901234567891')).toBe(
      'the integer 12345678901234567891 would be stored as 12345678901234567000: a JSON number keeps every integer exactly only up to 2^53 (9007199254740992); send it as a string',
    );
    expect(inexactIntegerMessage('9'.repeat(310))).toBe(`the integer ${'9'.repeat(40)}… is past the largest JSON number (about 1.8e308); send it as a string`);
    expect(inexactIntegerMessage(`-${'9'.repeat(310)}`)).toMatch(/^the integer -9{39}… is past the largest JSON number/);
  });
});

describe('jsonPathAt', () => {
  const at = (text: string, marker = '12345678901234567891') => jsonPathAt(Buffer.from(text), Buffer.byteLength(text.slice(0, text.indexOf(marker))));

  it('names the value at an offset by keys and indexes', () => {
    expect(at('{"spans":[{"a":1},{"attributes":{"id":12345678901234567891}}]}')).toEqual(['spans', 1, 'attributes', 'id']);
    expect(at('{"nodes":[{"metrics":{"ids":[1, 12345678901234567891]}}]}')).toEqual(['nodes', 0, 'metrics', 'ids', 1]);
    expect(at('12345678901234567891')).toEqual([]);
    // Keys are read as JSON reads them: escapes, and commas, colons and brackets inside strings.
    expect(at(String.raw`{"a,b:c\\":[[], {"\"}[":{}}, 12345678901234567891]}`)).toEqual(['a,b:c\\', 2]);
    expect(at(String.raw`{"\u00e9":12345678901234567891}`)).toEqual(['é']);
  });

  it('gives null where the text before the offset is not JSON enough to say', () => {
    expect(at(',12345678901234567891')).toBeNull();
    expect(at('{"a" 12345678901234567891}')).toBeNull();
  });

  it('finds the path of any value in generated documents, compact or indented', () => {
    const MARK = 'mark\u0000mark';
    type Path = (string | number)[];
    const pathsIn = (value: unknown, path: Path = []): Path[] => [
      path,
      ...(Array.isArray(value)
        ? value.flatMap((item, i) => pathsIn(item, [...path, i]))
        : typeof value === 'object' && value !== null
          ? Object.entries(value).flatMap(([key, item]) => pathsIn(item, [...path, key]))
          : []),
    ];
    const replaced = (value: unknown, path: Path): unknown => {
      if (path.length === 0) return MARK;
      const [head, ...rest] = path;
      if (Array.isArray(value)) return value.map((item, i) => (i === head ? replaced(item, rest) : item));
      return Object.fromEntries(Object.entries(value as object).map(([key, item]) => [key, key === head ? replaced(item, rest) : item]));
    };
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), fc.nat(), fc.constantFrom(0, 2), (document, pick, indent) => {
        const paths = pathsIn(document);
        const path = paths[pick % paths.length];
        const text = JSON.stringify(replaced(document, path), null, indent).replace(JSON.stringify(MARK), '12345678901234567891');
        fc.pre(text.indexOf('12345678901234567891') === text.lastIndexOf('12345678901234567891'));
        expect(at(text)).toEqual(path);
      }),
      { numRuns: 500 },
    );
  });
});
