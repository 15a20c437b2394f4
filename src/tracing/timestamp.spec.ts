import { isoToMicros, microsToIso, normalizeTimestamp } from './timestamp';

describe('timestamps with microseconds', () => {
  it('normalizes zones and precision to UTC with six digits', () => {
    expect(normalizeTimestamp('2026-11-22T10:00:00Z')).toBe('2026-11-22T10:00:00.000000Z');
    expect(normalizeTimestamp('2026-11-22T10:00:00.1234567Z')).toBe('2026-11-22T10:00:00.123456Z');
    expect(normalizeTimestamp('2026-11-22T12:30:00.000001+02:30')).toBe('2026-11-22T10:00:00.000001Z');
    expect(normalizeTimestamp('2026-11-22T00:00:00.5-01:00')).toBe('2026-11-22T01:00:00.500000Z');
    // Whole-hour offsets as Postgres prints them outside UTC, and without the colon.
    expect(normalizeTimestamp('2026-11-22 15:00:00+05')).toBe('2026-11-22T10:00:00.000000Z');
    expect(normalizeTimestamp('2026-11-22T07:00:00-03')).toBe('2026-11-22T10:00:00.000000Z');
    expect(normalizeTimestamp('2026-11-22T15:30:00+0530')).toBe('2026-11-22T10:00:00.000000Z');
  });

  it('rejects what is not a zoned ISO-8601 time or is out of range', () => {
    for (const bad of ['2026-11-22', '2026-11-22T10:00:00', 'yesterday', '2026-02-30T00:00:00Z', '2026-13-01T00:00:00Z', '1800-01-01T00:00:00Z', '2300-01-01T00:00:00Z', '', '2026-11-22T10:00:00+5', '2026-11-22T10:00:00+053', '2026-11-22T10:00:00+05:', '2026-11-22T10:00:00+24']) {
      expect(normalizeTimestamp(bad)).toBeNull();
    }
  });

  it('rejects years 0-99 instead of reading them as 1900-1999 (Date.UTC does)', () => {
    for (const bad of ['0050-01-01T00:00:00Z', '0099-12-31T23:59:59Z', '0001-01-01T00:00:00.000000Z', '0000-01-01T00:00:00Z']) {
      expect(normalizeTimestamp(bad)).toBeNull();
    }
    expect(normalizeTimestamp('1900-01-01T00:00:00Z')).toBe('1900-01-01T00:00:00.000000Z');
    expect(normalizeTimestamp('2299-12-31T23:59:59Z')).toBe('2299-12-31T23:59:59.000000Z');
  });

  it('rejects the last millisecond of 1899, which truncation toward zero read as 1900', () => {
    expect(normalizeTimestamp('1899-12-31T23:59:59.9995Z')).toBeNull();
    expect(normalizeTimestamp('1899-12-31T23:59:59.999999Z')).toBeNull();
    expect(normalizeTimestamp('1900-01-01T00:00:00.000001Z')).toBe('1900-01-01T00:00:00.000001Z');
  });

  it('round-trips through bigint microseconds exactly', () => {
    const iso = '2026-11-22T10:00:00.999999Z';
    expect(isoToMicros(iso)).toBe(1795341600999999n);
    expect(microsToIso(isoToMicros(iso))).toBe(iso);
    expect(microsToIso(isoToMicros('1950-06-01T00:00:00.000001Z'))).toBe('1950-06-01T00:00:00.000001Z');
  });
});
