import { pipeline, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { constants as zlib, createBrotliCompress } from 'node:zlib';
import { ClickHouseClient, ClickHouseSettings } from '@clickhouse/client';
import { InsertBody, MirrorSink } from './batch-writer';

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Table and column names cannot be bound parameters; they come from our mappers, and are checked. */
function checkedName(name: string): string {
  if (!NAME.test(name)) throw new Error(`not a table or column name: "${name}"`);
  return name;
}

/** Every insert of mirrored rows: batched by us, named by a deduplication token. (Exported for the benchmarks' ceilings.) */
export const INSERT_SETTINGS: ClickHouseSettings = {
  // Callers reuse the token on every retry of a batch; with the tables'
  // non_replicated_deduplication_window, a retry of an insert that did land
  // is dropped instead of stored twice.
  insert_deduplicate: 1,
  // Rows arrive batched already; async inserts would regroup them and deduplicate by their own rules, not the token.
  async_insert: 0,
  wait_end_of_query: 1,
  // The mirror's lines carry JSON payloads as objects and arrays, and String
  // columns store their text as it stands (see insertJson). Lines with the
  // payloads as strings, as verify and gap replays write, read the same.
  input_format_json_read_objects_as_strings: 1,
  input_format_json_read_arrays_as_strings: 1,
};

/**
 * The batch writer's ClickHouse side. Rows arrive already serialized as
 * JSONEachRow lines, so they are streamed as the request body unchanged.
 * client.insert() would re-encode them (it wants objects for JSON formats),
 * so this uses exec() with the INSERT in the query, the client's documented
 * route for pre-encoded bodies. It compresses the body itself if asked to
 * (see compressed), and the client must not. Each request is bounded by the
 * client's request_timeout.
 */
export class ClickHouseSink implements MirrorSink {
  /** `compress`: compress request bodies; worth it over a network, only CPU spent to a server on the same machine. */
  constructor(
    private readonly client: ClickHouseClient,
    private readonly options: { compress: boolean },
  ) {}

  async insert(table: string, body: InsertBody, dedupToken: string): Promise<void> {
    await this.send(`INSERT INTO ${checkedName(table)} FORMAT JSONEachRow`, Readable.from(body, { objectMode: false }), dedupToken);
  }

  /**
   * Inserts TabSeparated rows of these columns, streamed as they come (the
   * backfill's COPY output). The caller owns `rows`: on a failure it is left
   * as the request left it.
   */
  async insertTabSeparated(table: string, columns: readonly string[], rows: Readable, dedupToken: string): Promise<void> {
    const list = columns.map((c) => `\`${checkedName(c)}\``).join(', ');
    await this.send(`INSERT INTO ${checkedName(table)} (${list}) FORMAT TabSeparated`, rows, dedupToken);
  }

  private async send(query: string, body: Readable, dedupToken: string): Promise<void> {
    const result = await this.client.exec({
      query,
      values: this.options.compress ? compressed(body) : body,
      clickhouse_settings: { ...INSERT_SETTINGS, insert_deduplication_token: dedupToken },
      ...(this.options.compress && { http_headers: { 'Content-Encoding': 'br' } }),
    });
    // Read the (empty) answer to its end so the keep-alive socket goes back to the pool.
    result.stream.resume();
    await finished(result.stream);
  }

  /** Throws why ClickHouse did not answer (refused, timed out, ...), so the writer's lastError and /health name the cause. */
  async ping(): Promise<boolean> {
    const result = await this.client.ping();
    if (!result.success) throw result.error;
    return true;
  }
}

/**
 * Brotli at quality 0, which ClickHouse takes as Content-Encoding: br. The
 * write-path benchmark found compression the mirror's largest cost on the
 * API's cores; streaming 10,000 bench spans (19 MB of lines) in 1 MiB
 * chunks took 8.0 µs of CPU per span with gzip level 1 (this sink's codec
 * before) and 3.2 µs with brotli quality 0, both down to 0.16 of the size
 * (quality 1: 5.3 µs, 0.14). Text mode tunes it for the JSON and TSV bodies.
 */
const BROTLI_PARAMS = { [zlib.BROTLI_PARAM_QUALITY]: 0, [zlib.BROTLI_PARAM_MODE]: zlib.BROTLI_MODE_TEXT };

/**
 * zlib hands its output back in chunks of this size, each a trip from the
 * thread pool through the event loop. zlib's default is 16 KiB, ~170 trips
 * for a 15.6 MB batch of bench spans: with the event loop busy serving
 * requests (10 ms turns) gzipping it took 1.75 s instead of 0.19 s with
 * 1 MiB chunks, and the mirror fell behind its input under load
 * (bench:memory's healthy phase sent ~1,000 spans/s of ~2,800).
 */
const COMPRESSED_CHUNK_BYTES = 1 << 20;

/**
 * The body, compressed. Should the request fail, the client destroys this
 * stream, and the pipeline destroys the body with it. (Exported for the
 * benchmarks' ceilings, which must compress as the product does.)
 */
export function compressed(body: Readable): Readable {
  // The callback only absorbs the error: the request fails with it already, and reports it.
  return pipeline(body, createBrotliCompress({ params: BROTLI_PARAMS, chunkSize: COMPRESSED_CHUNK_BYTES }), () => undefined);
}

/**
 * Lines (each without its newline) as an insert body, in chunks of about
 * 1 MiB built as the request reads them: a chunk per line would be a write
 * into the compressor per line, and the whole body at once a copy of it.
 */
const BODY_CHUNK_BYTES = 1 << 20;
const NEWLINE = Buffer.from('\n');

export function* linesBody(lines: Iterable<string>): Generator<Buffer> {
  let parts: Buffer[] = [];
  let bytes = 0;
  for (const line of lines) {
    const data = Buffer.from(line, 'utf8');
    parts.push(data, NEWLINE);
    bytes += data.length + 1;
    if (bytes >= BODY_CHUNK_BYTES) {
      yield Buffer.concat(parts, bytes);
      parts = [];
      bytes = 0;
    }
  }
  if (bytes > 0) yield Buffer.concat(parts, bytes);
}
