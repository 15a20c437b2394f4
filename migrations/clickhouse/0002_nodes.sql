-- Legacy observability nodes mirrored from Postgres; the same rules as spans
-- (see 0001_spans.sql): versions decide, tombstones delete, the key never changes.
CREATE TABLE IF NOT EXISTS nodes
(
    project_id     UUID,
    node_id        UUID,
    -- tree_id is the trace; root and parent are other nodes of the same tree.
    tree_id        UUID,
    root_id        Nullable(UUID),
    parent_id      Nullable(UUID),
    -- Few distinct values each: dictionary encoding.
    node_name      LowCardinality(String),
    node_type      LowCardinality(String),
    -- Microseconds in UTC, as in Postgres.
    time_start     DateTime64(6, 'UTC'),
    time_end       DateTime64(6, 'UTC'),
    status_code    LowCardinality(String),
    status_message Nullable(String),
    -- JSON text for an exact round-trip; ZSTD for the repetitive payloads.
    data           Nullable(String) CODEC(ZSTD(3)),
    metrics        Nullable(String) CODEC(ZSTD(3)),
    meta           Nullable(String) CODEC(ZSTD(3)),
    refs           Nullable(String) CODEC(ZSTD(3)),
    exception      Nullable(String) CODEC(ZSTD(3)),
    links          Nullable(String) CODEC(ZSTD(3)),
    otel           Nullable(String) CODEC(ZSTD(3)),
    created_at     DateTime64(6, 'UTC'),
    updated_at     DateTime64(6, 'UTC'),
    -- Postgres microseconds at this write (updated_at or deleted_at); highest wins.
    version        UInt64,
    -- 1 marks a tombstone; FINAL hides a key whose newest row is one.
    is_deleted     UInt8,

    -- Tree reads cross days, which the sort key cannot reach.
    INDEX tree_id_bf tree_id TYPE bloom_filter GRANULARITY 4,
    -- Analytics filter on time_start.
    INDEX time_start_minmax time_start TYPE minmax GRANULARITY 4
)
ENGINE = ReplacingMergeTree(version, is_deleted)
-- Immutable, so all versions of a node share a partition; monthly keeps parts few.
PARTITION BY toYYYYMM(created_at)
-- Only creation-time columns: project first for scoping, the day for per-day buckets.
ORDER BY (project_id, toDate(created_at), node_id)
PRIMARY KEY (project_id, toDate(created_at), node_id)
-- Lets insert_deduplication_token drop a retried batch on non-replicated MergeTree.
SETTINGS non_replicated_deduplication_window = 1000;
