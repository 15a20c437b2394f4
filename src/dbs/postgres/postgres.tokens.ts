/** The Kysely<DB> instance over the app's pg Pool. */
export const KYSELY = Symbol('KYSELY');
/** The requests' pg Pool itself (its use on /health, ending sessions at shutdown, its metrics). */
export const PG_POOL = Symbol('PG_POOL');
/**
 * A Kysely over the mirror's own small pool, for its gap records: a
 * ClickHouse outage's records never wait behind requests for a connection,
 * and a shutdown that has given up on requests (InFlightSessions) still lets
 * the mirror record what it could not send.
 */
export const MIRROR_KYSELY = Symbol('MIRROR_KYSELY');
