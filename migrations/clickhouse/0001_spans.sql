-- Spans mirrored from Postgres for analytics. Postgres stays the system of
-- record; this table converges to it by version, whatever order rows arrive in.
-- The runner executes this with the configured database as the default, so the
-- name is not written here; IF NOT EXISTS lets a half-applied file be re-run.
CREATE TABLE IF NOT EXISTS spans
(
    -- UUIDs are 16 bytes, not 36 characters; ids never change after creation.
    project_id     UUID,
    -- OTel's 32-hex trace id is exactly 128 bits, so it is stored as a UUID.
    trace_id       UUID,
    -- OTel's 16-hex span id is exactly 64 bits; the mapper converts hex <-> unsigned via BigInt.
    span_id        UInt64,
    parent_id      Nullable(UInt64),
    -- Enums and names repeat heavily: dictionary encoding makes them cheap to store and group by.
    trace_type     LowCardinality(String),
    span_type      LowCardinality(String),
    span_kind      LowCardinality(String),
    span_name      LowCardinality(String),
    -- Microseconds, like Postgres timestamptz; UTC so text round-trips without a zone.
    start_time     DateTime64(6, 'UTC'),
    end_time       DateTime64(6, 'UTC'),
    status_code    LowCardinality(String),
    status_message Nullable(String),
    -- JSON kept as its text: an exact round-trip of what Postgres holds, and ZSTD
    -- shrinks the repetitive keys far better than the default LZ4.
    attributes     String CODEC(ZSTD(3)),
    references     Nullable(String) CODEC(ZSTD(3)),
    links          Nullable(String) CODEC(ZSTD(3)),
    hashes         Nullable(String) CODEC(ZSTD(3)),
    events         Nullable(String) CODEC(ZSTD(3)),
    exception      Nullable(String) CODEC(ZSTD(3)),
    created_at     DateTime64(6, 'UTC'),
    updated_at     DateTime64(6, 'UTC'),
    created_by_id  Nullable(UUID),
    updated_by_id  Nullable(UUID),
    -- Microseconds of the row's Postgres clock at this write (updated_at, or
    -- deleted_at for a tombstone): the highest version wins, so a live write and
    -- a backfill of the same state are the same row, and an older one never wins.
    version        UInt64,
    -- 1 marks a tombstone; FINAL hides a key whose newest row is one.
    is_deleted     UInt8,

    -- The sort key cannot reach a trace lookup that spans days; this lets it
    -- skip granules that cannot hold the trace.
    INDEX trace_id_bf trace_id TYPE bloom_filter GRANULARITY 4,
    -- Analytics filter on start_time, which is close to created_at but not in the key.
    INDEX start_time_minmax start_time TYPE minmax GRANULARITY 4
)
-- Updates are full-row re-inserts and deletes are tombstones; merges (and FINAL
-- at read time) keep only the highest version per sort key.
ENGINE = ReplacingMergeTree(version, is_deleted)
-- created_at never changes, so every version of a row lands in the same
-- partition and merges can replace it; monthly keeps the part count low.
PARTITION BY toYYYYMM(created_at)
-- The sort key is the row's identity for replacement, so it holds only columns
-- fixed at creation; project first because every query is scoped to one, the
-- day next so per-day buckets (verify, TTL, analytics) read contiguous ranges.
ORDER BY (project_id, toDate(created_at), trace_id, span_id)
-- The primary index must be a prefix of ORDER BY; the whole key keeps point reads exact.
PRIMARY KEY (project_id, toDate(created_at), trace_id, span_id)
-- Non-replicated MergeTree deduplicates inserts only with a window: this makes
-- insert_deduplication_token drop a retried batch that already landed.
SETTINGS non_replicated_deduplication_window = 1000;
