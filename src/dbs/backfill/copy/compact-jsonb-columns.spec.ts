import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { CompactJsonbColumns } from './compact-jsonb-columns';
import { compactJsonbField, escapeCopyText, unescapeCopyText } from './jsonb-text';

/** A jsonb value as COPY prints it: Postgres's spacing, backslashes doubled. */
const copied = (pgText: string) => escapeCopyText(pgText);
/** What the row mapper writes for the same value, escaped as in the COPY line. */
const mapped = (pgText: string) => escapeCopyText(JSON.stringify(JSON.parse(pgText)));

describe('compactJsonbField', () => {
  it.each([
    ['spaces only', '{"a": [1, 2, {"b": null}], "c": true}'],
    ['spaces inside strings stay', '{"k: , ": " a , b : c "}'],
    ['escapes inside strings', '{"s": "q\\" b\\\\ n\\n t\\t u\\u0001 end\\\\"}'],
    ['numbers JavaScript prints alike', '{"i": -12, "f": 0.25, "z": 0}'],
    ['numbers it prints differently', '{"a": 1.50, "b": -0, "c": 1000000000000000000000, "d": 0.0000001, "e": [2.000, -0.50]}'],
    ['a number past a double', `{"huge": 1${'0'.repeat(400)}, "tiny": 0.${'0'.repeat(400)}1}`],
    ['keys it reorders', '{"b": 1, "10": 2, "a": 3, "2": 4}'],
    ['an array at the top', '[1, "two", [3]]'],
    ['non-ASCII', '{"ü": "😀 ünï"}'],
  ])('%s: the text JSON.stringify gives', (_, pgText) => {
    expect(compactJsonbField(copied(pgText))).toBe(mapped(pgText));
  });

  it('passes NULL through', () => {
    expect(compactJsonbField('\\N')).toBe('\\N');
  });

  it('fails on an unterminated string rather than guessing', () => {
    expect(() => compactJsonbField('{"a": "open')).toThrow('unterminated');
  });

  it('COPY escapes round-trip', () => {
    const value = 'tab\there \\ new\nline \r \b \f \v end';
    expect(unescapeCopyText(escapeCopyText(value))).toBe(value);
    expect(() => unescapeCopyText('bad \\x escape')).toThrow('unexpected escape');
  });
});

describe('CompactJsonbColumns', () => {
  const line = (plain: string[], json: string[]) => [...plain, ...json.map((j) => (j === '\\N' ? j : copied(j)))].join('\t');
  const rows = [
    line(['id-1', 'tab\\there', '\\N'], ['{"a": 1}', '\\N']),
    line(['id-2', 'ünïcødé 😀', 'x'], ['{"b": [1, 2], "c": "d: e"}', '[1.50]']),
  ];
  const expected = `${['id-1', 'tab\\there', '\\N', '{"a":1}', '\\N'].join('\t')}\n${['id-2', 'ünïcødé 😀', 'x', '{"b":[1,2],"c":"d: e"}', '[1.5]'].join('\t')}\n`;

  it('rewrites only the jsonb columns, whatever the chunk boundaries (inside lines and inside characters)', async () => {
    const bytes = Buffer.from(`${rows.join('\n')}\n`);
    for (const size of [1, 2, 3, 7, bytes.length]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
      expect(await text(Readable.from(chunks).pipe(new CompactJsonbColumns(5, 2)))).toBe(expected);
    }
  });

  it('keeps a last line without its newline', async () => {
    expect(await text(Readable.from([Buffer.from(rows.join('\n'))]).pipe(new CompactJsonbColumns(5, 2)))).toBe(expected);
  });

  it.each([
    ['too few fields', 'a\tb\t{}'],
    ['too many fields', 'a\tb\tc\t{}\t{}\textra'],
  ])('fails the stream on a line with %s', async (_, bad) => {
    await expect(text(Readable.from([Buffer.from(`${bad}\n`)]).pipe(new CompactJsonbColumns(5, 2)))).rejects.toThrow('expected fields');
  });
});
