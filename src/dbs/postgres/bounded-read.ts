/**
 * Runs `select` for at most `max` rows (no bound when undefined). It reads one
 * row past the bound, which tells a result that is too large from one that
 * fits exactly without reading it all, and then throws `tooLarge(max)`.
 */
export async function selectAtMost<Row>(
  select: { limit(rows: number): { execute(): Promise<Row[]> }; execute(): Promise<Row[]> },
  max: number | undefined,
  tooLarge: (max: number) => Error,
): Promise<Row[]> {
  if (max === undefined) return select.execute();
  const rows = await select.limit(max + 1).execute();
  if (rows.length > max) throw tooLarge(max);
  return rows;
}
