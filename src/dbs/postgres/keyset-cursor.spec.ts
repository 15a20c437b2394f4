import { InvalidQueryError } from '../../tracing/span-query';
import { cursorTag, decodeCursor, encodeCursor } from './keyset-cursor';

describe('cursorTag', () => {
  const filter = { operator: 'and', conditions: [{ field: 'attributes', key: ['a'], operator: 'has', value: { b: null } }] };

  it('digests the selection: key order and its own absent or null entries do not count', () => {
    const tag = cursorTag('span:descending', { filter, oldest: '2026-11-22T00:00:00.000000Z', newest: undefined });
    expect(tag).toMatch(/^span:descending:[A-Za-z0-9_-]{12}$/);
    expect(cursorTag('span:descending', { newest: null, oldest: '2026-11-22T00:00:00.000000Z', filter })).toBe(tag);
    const reordered = { conditions: [{ value: { b: null }, operator: 'has', key: ['a'], field: 'attributes' }], operator: 'and' };
    expect(cursorTag('span:descending', { oldest: '2026-11-22T00:00:00.000000Z', filter: reordered })).toBe(tag);
  });

  it('tells apart selections that select other rows, a null inside a value included', () => {
    const tag = cursorTag('span:descending', { filter });
    const without = { operator: 'and', conditions: [{ field: 'attributes', key: ['a'], operator: 'has', value: {} }] };
    for (const other of [{ filter: without }, { filter, oldest: '2026-11-22T00:00:00.000000Z' }, {}]) {
      expect(cursorTag('span:descending', other)).not.toBe(tag);
    }
    expect(cursorTag('span:ascending', { filter })).not.toBe(tag);
  });
});

describe('decodeCursor', () => {
  const isPosition = (p: unknown[]): p is [string] => p.length === 1 && typeof p[0] === 'string';
  const refusal = (next: string, issuedFor: string) => {
    try {
      decodeCursor(next, 'next', issuedFor, isPosition);
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidQueryError);
      return (error as InvalidQueryError).reason;
    }
    throw new Error('expected a refusal');
  };
  const tag = cursorTag('nodes:descending', { tree_id: 'a' });

  it('gives back the position of a cursor issued for the same selection', () => {
    expect(decodeCursor(encodeCursor(tag, ['x']), 'next', tag, isPosition)).toEqual(['x']);
  });

  it('says which of kind, selection or version the cursor was issued for otherwise', () => {
    expect(refusal(encodeCursor(cursorTag('nodes:descending', { tree_id: 'b' }), ['x']), tag)).toMatch(/^the cursor continues a query with another filter or window/);
    expect(refusal(encodeCursor(cursorTag('span:descending', { tree_id: 'a' }), ['x']), tag)).toBe(
      'the cursor belongs to another kind of query, focus or order (span:descending); start again without it',
    );
    // As cursors were before they carried a digest.
    expect(refusal(encodeCursor('nodes:descending', ['x']), tag)).toBe('the cursor was issued by an earlier version of this API; start again without it');
  });
});
