import { InsertBody } from '../../src/dbs/clickhouse/batch-writer';

/** The lines of an insert body (JSONEachRow text in pieces, each line ending in '\n'), for fake sinks. */
export function linesOfBody(body: InsertBody): string[] {
  const text = Buffer.concat([...body]).toString('utf8');
  if (text !== '' && !text.endsWith('\n')) throw new Error(`an insert body must end with a newline: ${JSON.stringify(text.slice(-40))}`);
  return text === '' ? [] : text.slice(0, -1).split('\n');
}
