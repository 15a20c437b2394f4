import { Readable } from 'node:stream';
import { Pool } from 'pg';
import { to as copyTo } from 'pg-copy-streams';

/**
 * The rows of a COPY ... TO STDOUT statement as a byte stream, on a
 * connection of its own that goes back to the pool when the stream ends. A
 * stream abandoned or failed midway leaves the connection inside the COPY,
 * so it is discarded instead of reused.
 */
export async function copyOut(pool: Pool, statement: string): Promise<Readable> {
  const client = await pool.connect();
  let released = false;
  const release = (error?: Error) => {
    if (released) return;
    released = true;
    client.release(error);
  };
  let stream: Readable;
  try {
    stream = client.query(copyTo(statement));
  } catch (error) {
    release(error as Error);
    throw error;
  }
  stream.once('end', () => release());
  stream.once('error', (error) => release(error));
  stream.once('close', () => release(new Error('COPY stream closed before its end')));
  return stream;
}
