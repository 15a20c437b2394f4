import { pipeline, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { constants as zlib, createBrotliCompress } from 'node:zlib';
import { ClickHouseClient, ClickHouseSettings } from '@clickhouse/client';

/**
 * A ceiling's insert: a body built beforehand, sent with @clickhouse/client's
 * exec() as ClickHouseSink sends the product's (src/dbs/clickhouse/
 * clickhouse-sink.ts), with the same settings and, when asked, the same
 * compression. A ceiling that sends other bytes or settings measures other
 * work: one that re-encoded the JSON payloads and compressed with the
 * client's 16 KiB brotli stream spent 72.8 µs of CPU per span against the
 * writer's 40.2 (mirror-throughput on 2f5e518), and the writer "beat" it
 * 1.74×. The sink exports neither its settings nor its compression
 * parameters, so they are repeated here; a change to either there belongs
 * here too.
 */

/** ClickHouseSink's INSERT_SETTINGS; the token is each insert's own. */
const SINK_INSERT_SETTINGS: ClickHouseSettings = {
  insert_deduplicate: 1,
  async_insert: 0,
  wait_end_of_query: 1,
  input_format_json_read_objects_as_strings: 1,
  input_format_json_read_arrays_as_strings: 1,
};

/** ClickHouseSink's BROTLI_PARAMS and COMPRESSED_CHUNK_BYTES. */
const SINK_BROTLI = {
  params: { [zlib.BROTLI_PARAM_QUALITY]: 0, [zlib.BROTLI_PARAM_MODE]: zlib.BROTLI_MODE_TEXT },
  chunkSize: 1 << 20,
};

export async function rawInsert(
  client: ClickHouseClient,
  query: string,
  body: readonly Uint8Array[],
  options: { compress: boolean; dedupToken: string },
): Promise<void> {
  const values = Readable.from(body, { objectMode: false });
  const result = await client.exec({
    query,
    values: options.compress ? pipeline(values, createBrotliCompress(SINK_BROTLI), () => undefined) : values,
    clickhouse_settings: { ...SINK_INSERT_SETTINGS, insert_deduplication_token: options.dedupToken },
    ...(options.compress && { http_headers: { 'Content-Encoding': 'br' } }),
  });
  result.stream.resume();
  await finished(result.stream);
}
