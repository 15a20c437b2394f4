import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import type { Transform, Writable } from 'node:stream';
import * as zlib from 'node:zlib';
import { Session } from 'chdb';
import { processAlive } from '../../src/dbs/process-alive';
import { errorText } from '../../src/error-text';

/**
 * The ClickHouse HTTP interface over chdb, the real ClickHouse engine embedded
 * in this process: enough of it for @clickhouse/client 1.x (ping, queries with
 * bound parameters and settings, inserts with streamed and compressed bodies,
 * ClickHouse-shaped errors), so machines without Docker run the same code path
 * against the same engine. chdb binds one data directory per process, so one
 * server owns its directory.
 */

export interface ChdbHttpServerOptions {
  /** 0 picks a free port. */
  port: number;
  host?: string;
  dataDir: string;
  /** Problems that are the server's, not the query's (those go to the client). */
  log?: (message: string) => void;
  /**
   * Paths this local server answers itself, beside ClickHouse's HTTP
   * interface (which gives any path but / and /ping a 404), e.g. the holders
   * of scripts/clickhouse-local/server-holders.ts.
   */
  ownPaths?: Record<string, OwnPathHandler>;
}

export type OwnPathHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void;

export interface ChdbHttpServer {
  port: number;
  url: string;
  /** Engine version, e.g. 26.7.2.1. */
  version: string;
  close(): Promise<void>;
}

type BoundParams = Record<string, string>;

interface NativeQueryResult {
  bytes: Uint8Array;
  elapsed: number;
  rowsRead: number;
  bytesRead: number;
}

interface NativeInsertResult {
  elapsed: number;
  rowsWritten: number;
  bytesWritten: number;
}

interface NativeStreamChunk {
  done: boolean;
  bytes: Uint8Array;
}

interface ChdbNative {
  QueryAsyncConnection(connection: unknown, sql: string, format: string, params?: BoundParams): Promise<NativeQueryResult>;
  InsertRawAsyncConnection(connection: unknown, prefix: string, data: Buffer, countLines: boolean): Promise<NativeInsertResult>;
  StreamQuery(connection: unknown, sql: string, format: string, params?: BoundParams): unknown;
  StreamFetch(handle: unknown): Promise<NativeStreamChunk>;
  StreamCancel(handle: unknown): void;
}

/**
 * chdb's public bind API escapes every string value again, but the HTTP
 * client has already escaped `param_*` values exactly as ClickHouse reads
 * them, so they go to the engine untouched through the addon chdb loads.
 */
function loadNative(): ChdbNative {
  const packageDir = dirname(require.resolve('chdb/package.json'));
  const loader = require(join(packageDir, 'dist', 'loader.js')) as { loadNative(): Partial<ChdbNative> };
  const native = loader.loadNative();
  const needed = ['QueryAsyncConnection', 'InsertRawAsyncConnection', 'StreamQuery', 'StreamFetch', 'StreamCancel'] as const;
  const missing = needed.filter((name) => typeof native[name] !== 'function');
  if (missing.length > 0) throw new Error(`this chdb build lacks ${missing.join(', ')}; the local ClickHouse server needs chdb 3.4`);
  return native as ChdbNative;
}

class ClickHouseException extends Error {
  constructor(
    readonly code: number,
    readonly type: string,
    detail: string,
  ) {
    super(`Code: ${code}. DB::Exception: ${detail}. (${type})`);
  }
}

const SYNTAX_ERROR = (detail: string) => new ClickHouseException(62, 'SYNTAX_ERROR', detail);
const BAD_ARGUMENTS = (detail: string) => new ClickHouseException(36, 'BAD_ARGUMENTS', detail);

interface EngineError {
  code: number;
  type: string;
  message: string;
}

/** chdb errors carry the engine's own text: "Code: 60. DB::Exception: ... (UNKNOWN_TABLE)". */
function toEngineError(error: unknown): EngineError {
  if (error instanceof ClickHouseException) return { code: error.code, type: error.type, message: error.message };
  const message = (error instanceof Error ? error.message : String(error)).trim();
  const code = /^Code:\s*(\d+)\./.exec(message);
  const types = [...message.matchAll(/\(([A-Z0-9_]*[A-Z]{3}[A-Z0-9_]*)\)/g)];
  if (code && types.length > 0) return { code: Number(code[1]), type: types[types.length - 1][1], message };
  return { code: 1001, type: 'STD_EXCEPTION', message: `Code: 1001. DB::Exception: ${message}. (STD_EXCEPTION)` };
}

const BAD_REQUEST_TYPES = new Set([
  'CANNOT_PARSE_TEXT',
  'CANNOT_PARSE_ESCAPE_SEQUENCE',
  'CANNOT_PARSE_QUOTED_STRING',
  'CANNOT_PARSE_DATE',
  'CANNOT_PARSE_DATETIME',
  'CANNOT_PARSE_NUMBER',
  'CANNOT_PARSE_INPUT_ASSERTION_FAILED',
  'CANNOT_PARSE_UUID',
  'CANNOT_PARSE_IPV4',
  'CANNOT_PARSE_IPV6',
  'UNKNOWN_ELEMENT_IN_AST',
  'UNKNOWN_TYPE_OF_AST_NODE',
  'TOO_DEEP_AST',
  'TOO_BIG_AST',
  'UNEXPECTED_AST_STRUCTURE',
  'SYNTAX_ERROR',
  'INCORRECT_DATA',
  'TYPE_MISMATCH',
]);

const NOT_FOUND_TYPES = new Set([
  'UNKNOWN_TABLE',
  'UNKNOWN_FUNCTION',
  'UNKNOWN_IDENTIFIER',
  'UNKNOWN_TYPE',
  'UNKNOWN_STORAGE',
  'UNKNOWN_DATABASE',
  'UNKNOWN_SETTING',
  'UNKNOWN_DIRECTION_OF_SORTING',
  'UNKNOWN_AGGREGATE_FUNCTION',
  'UNKNOWN_FORMAT',
  'UNKNOWN_DATABASE_ENGINE',
  'UNKNOWN_TYPE_OF_QUERY',
  'UNKNOWN_ROLE',
]);

/** The status ClickHouse's own HTTP handler gives each kind of error. */
function httpStatusFor(type: string): number {
  if (BAD_REQUEST_TYPES.has(type)) return 400;
  if (NOT_FOUND_TYPES.has(type)) return 404;
  if (type === 'QUERY_IS_TOO_LARGE') return 413;
  if (type === 'NOT_IMPLEMENTED') return 501;
  if (type === 'SOCKET_TIMEOUT' || type === 'CANNOT_OPEN_FILE') return 503;
  return 500;
}

interface SqlToken {
  kind: 'word' | 'open' | 'close' | 'semicolon' | 'other';
  text: string;
  end: number;
}

/** Tokens of ClickHouse SQL with literals, quoted names and comments skipped over. */
function* sqlTokens(sql: string): Generator<SqlToken> {
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql[i];
    if (/\s/.test(c)) {
      i++;
    } else if ((c === '-' && sql[i + 1] === '-') || (c === '#' && (sql[i + 1] === '!' || /\s/.test(sql[i + 1] ?? ' ')))) {
      const eol = sql.indexOf('\n', i);
      i = eol === -1 ? n : eol + 1;
    } else if (c === '/' && sql[i + 1] === '*') {
      let depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') (depth++, (i += 2));
        else if (sql[i] === '*' && sql[i + 1] === '/') (depth--, (i += 2));
        else i++;
      }
    } else if (c === "'" || c === '"' || c === '`') {
      i++;
      while (i < n) {
        if (sql[i] === '\\') i += 2;
        else if (sql[i] === c && sql[i + 1] === c) i += 2;
        else if (sql[i] === c) break;
        else i++;
      }
      i++;
      yield { kind: 'other', text: c, end: Math.min(i, n) };
    } else if (c === '$' && /^\$[A-Za-z0-9_]*\$/.test(sql.slice(i, i + 256))) {
      const tag = /^\$[A-Za-z0-9_]*\$/.exec(sql.slice(i, i + 256))![0];
      const close = sql.indexOf(tag, i + tag.length);
      i = close === -1 ? n : close + tag.length;
      yield { kind: 'other', text: tag, end: i };
    } else if (/[A-Za-z0-9_\u0080-\uffff]/.test(c)) {
      const start = i;
      while (i < n && /[A-Za-z0-9_\u0080-\uffff]/.test(sql[i])) i++;
      yield { kind: 'word', text: sql.slice(start, i), end: i };
    } else {
      i++;
      const kind = c === '(' || c === '[' ? 'open' : c === ')' || c === ']' ? 'close' : c === ';' ? 'semicolon' : 'other';
      yield { kind, text: c, end: i };
    }
  }
}

interface SqlShape {
  /** The statement's first keyword, upper-cased. */
  keyword?: string;
  /** INSERT only: where the inline data starts (after VALUES or FORMAT name). */
  dataStart?: number;
  /** A trailing FORMAT clause choosing the output format. */
  format?: string;
  /** ClickHouse's HTTP interface runs one statement per request. */
  multiStatement: boolean;
}

function sqlShape(sql: string): SqlShape {
  const tokens = sqlTokens(sql);
  const next = (): SqlToken | undefined => {
    const step = tokens.next();
    return step.done ? undefined : step.value;
  };
  const shape: SqlShape = { multiStatement: false };
  let depth = 0;
  let ended = false;
  let insertSelect = false;
  let pendingFormat: string | undefined;
  for (let token = next(); token; ) {
    if (ended) {
      shape.multiStatement = true;
      return shape;
    }
    if (token.kind === 'open') depth++;
    else if (token.kind === 'close') depth = Math.max(0, depth - 1);
    else if (token.kind === 'semicolon' && depth === 0) ended = true;
    if (pendingFormat !== undefined) {
      // FORMAT <name> counts only at the end of the statement (or before SETTINGS), not as a column called format.
      if (token.kind === 'semicolon' || (token.kind === 'word' && token.text.toUpperCase() === 'SETTINGS')) shape.format = pendingFormat;
      pendingFormat = undefined;
    }
    if (token.kind !== 'word') {
      token = next();
      continue;
    }
    const word = token.text.toUpperCase();
    if (shape.keyword === undefined) {
      shape.keyword = word;
    } else if (depth === 0 && shape.keyword === 'INSERT') {
      if (word === 'SELECT' || word === 'WITH') insertSelect = true;
      if (word === 'VALUES' && !insertSelect) return { ...shape, dataStart: token.end };
      if (word === 'FORMAT') {
        const name = next();
        if (name?.kind === 'word') return { ...shape, dataStart: name.end };
        token = name;
        continue;
      }
    } else if (depth === 0 && word === 'FORMAT') {
      const name = next();
      if (name?.kind === 'word') {
        pendingFormat = name.text;
        token = next();
      } else {
        token = name;
      }
      continue;
    }
    token = next();
  }
  if (pendingFormat !== undefined) shape.format = pendingFormat;
  return shape;
}

/** Parameters of the HTTP interface that are not engine settings. */
const HTTP_ONLY_PARAMS = new Set([
  'query',
  'database',
  'default_format',
  'query_id',
  'session_id',
  'session_timeout',
  'session_check',
  'close_session',
  'compress',
  'decompress',
  'buffer_size',
  'wait_end_of_query',
  'user',
  'password',
  'quota_key',
  'stacktrace',
  'role',
  'client_protocol_version',
  'enable_http_compression',
  'send_progress_in_http_headers',
]);

const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const FORMAT_NAME = /^[A-Za-z0-9_]+$/;
/** ClickHouse's default max_session_timeout. */
const MAX_SESSION_TIMEOUT_SECONDS = 3600;
/** Enough of a body to find where an INSERT's inline data begins. */
const INSERT_HEAD_BYTES = 1 << 20;
/** ClickHouse's http_max_uri_size (1 MiB), plus room for the headers after the request line. */
const MAX_REQUEST_HEAD_BYTES = (1 << 20) + (64 << 10);

interface InsertData {
  prefix: string;
  data: Buffer;
}

interface ParsedRequest {
  sql?: string;
  insert?: InsertData;
  params: BoundParams;
  settings: Array<[string, string]>;
  database?: string;
  format: string;
  sessionId?: string;
  sessionTimeoutMs: number;
  closeSession: boolean;
  buffered: boolean;
}

function quoteString(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function quoteIdentifier(name: string): string {
  return `\`${name.replace(/\\/g, '\\\\').replace(/`/g, '\\`')}\``;
}

function isBlank(data: Buffer): boolean {
  for (const byte of data) if (byte !== 0x20 && byte !== 0x0a && byte !== 0x0d && byte !== 0x09) return false;
  return true;
}

function parseMultipart(body: Buffer, contentType: string): Map<string, string> {
  const boundary = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  if (!boundary) throw BAD_ARGUMENTS('multipart/form-data body without a boundary');
  const delimiter = `--${boundary[1] ?? boundary[2]}`;
  const fields = new Map<string, string>();
  for (const part of body.toString('utf8').split(delimiter).slice(1)) {
    if (part.startsWith('--')) break;
    const headerEnd = part.indexOf('\r\n\r\n');
    if (headerEnd === -1) continue;
    const headers = part.slice(0, headerEnd);
    const name = /name="([^"]*)"/i.exec(headers)?.[1];
    if (name === undefined) continue;
    if (/filename=/i.test(headers)) throw new ClickHouseException(48, 'NOT_IMPLEMENTED', 'external tables are not supported by the local server');
    fields.set(name, part.slice(headerEnd + 4).replace(/\r\n$/, ''));
  }
  return fields;
}

function parseRequest(url: URL, body: Buffer, headers: IncomingMessage['headers']): ParsedRequest {
  const fields = new Map<string, string>();
  for (const [key, value] of url.searchParams) fields.set(key, value);
  const contentType = headers['content-type'] ?? '';
  let payload = body;
  if (/^multipart\/form-data/i.test(contentType)) {
    for (const [key, value] of parseMultipart(body, contentType)) fields.set(key, value);
    payload = Buffer.alloc(0);
  }

  const params: BoundParams = {};
  const settings: Array<[string, string]> = [];
  for (const [key, value] of fields) {
    if (key.startsWith('param_')) params[key.slice('param_'.length)] = value;
    else if (key === '' || HTTP_ONLY_PARAMS.has(key) || key.startsWith('http_')) continue;
    else if (!SETTING_NAME.test(key)) throw new ClickHouseException(115, 'UNKNOWN_SETTING', `Unknown setting '${key}'`);
    else settings.push([key, value]);
  }

  const format = fields.get('default_format') || (headers['x-clickhouse-format'] as string | undefined) || 'TabSeparated';
  if (!FORMAT_NAME.test(format)) throw new ClickHouseException(73, 'UNKNOWN_FORMAT', `Unknown format ${format}`);
  if (fields.get('decompress') === '1') throw new ClickHouseException(48, 'NOT_IMPLEMENTED', 'decompress=1 (ClickHouse native compression) is not supported by the local server');
  const timeoutSeconds = Number(fields.get('session_timeout') ?? 60);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds < 0) throw new ClickHouseException(374, 'INVALID_SESSION_TIMEOUT', `Invalid session timeout: '${fields.get('session_timeout')}'`);
  // ClickHouse's own limit (max_session_timeout); past about 24.8 days setTimeout would also overflow and fire at once.
  if (timeoutSeconds > MAX_SESSION_TIMEOUT_SECONDS) {
    throw new ClickHouseException(374, 'INVALID_SESSION_TIMEOUT', `Session timeout exceeds the maximum (max_session_timeout = ${MAX_SESSION_TIMEOUT_SECONDS} s): ${timeoutSeconds}`);
  }

  const request: ParsedRequest = {
    params,
    settings,
    database: fields.get('database') || undefined,
    format,
    sessionId: fields.get('session_id') || undefined,
    sessionTimeoutMs: timeoutSeconds * 1000,
    closeSession: fields.get('close_session') === '1',
    buffered: fields.get('wait_end_of_query') === '1',
  };
  const hasParams = Object.keys(params).length > 0;
  const queryText = fields.get('query');

  if (queryText !== undefined && queryText !== '') {
    // ClickHouse reads the query as the `query` parameter, a newline, then the body.
    const shape = sqlShape(queryText);
    if (shape.keyword === 'INSERT' && shape.dataStart !== undefined && !hasParams) {
      const inline = queryText.slice(shape.dataStart);
      const data = inline.trim() === '' ? payload : Buffer.concat([Buffer.from(inline), Buffer.from('\n'), payload]);
      request.insert = { prefix: queryText.slice(0, shape.dataStart), data };
    } else {
      request.sql = payload.length > 0 ? `${queryText}\n${payload.toString('utf8')}` : queryText;
    }
    return request;
  }
  if (payload.length === 0) throw SYNTAX_ERROR('Empty query');

  // Latin-1 keeps string offsets equal to byte offsets, so the body can be split without decoding it twice.
  const head = sqlShape(payload.subarray(0, INSERT_HEAD_BYTES).toString('latin1'));
  if (head.keyword === 'INSERT' && head.dataStart !== undefined && !hasParams) {
    request.insert = { prefix: payload.subarray(0, head.dataStart).toString('utf8'), data: payload.subarray(head.dataStart) };
  } else {
    request.sql = payload.toString('utf8');
  }
  return request;
}

function contentTypeFor(format: string): string {
  if (/^JSON/i.test(format)) return 'application/json; charset=UTF-8';
  if (/^(TabSeparated|TSV)/i.test(format)) return 'text/tab-separated-values; charset=UTF-8';
  if (/^CSV/i.test(format)) return `text/csv; charset=UTF-8; header=${/WithNames/i.test(format) ? 'present' : 'absent'}`;
  return 'text/plain; charset=UTF-8';
}

function summaryHeader(summary: { readRows?: number; readBytes?: number; writtenRows?: number; writtenBytes?: number; elapsed?: number }): string {
  return JSON.stringify({
    read_rows: String(summary.readRows ?? 0),
    read_bytes: String(summary.readBytes ?? 0),
    written_rows: String(summary.writtenRows ?? 0),
    written_bytes: String(summary.writtenBytes ?? 0),
    total_rows_to_read: String(summary.readRows ?? 0),
    result_rows: String(summary.writtenRows ?? 0),
    result_bytes: String(summary.writtenBytes ?? 0),
    elapsed_ns: String(Math.round((summary.elapsed ?? 0) * 1e9)),
  });
}

function requestDecoder(encoding: string): Transform {
  switch (encoding.trim().toLowerCase()) {
    case 'gzip':
    case 'x-gzip':
      return zlib.createGunzip();
    case 'deflate':
      return zlib.createInflate();
    case 'br':
      return zlib.createBrotliDecompress();
    default:
      throw BAD_ARGUMENTS(`Unknown Content-Encoding of HTTP request: ${encoding}`);
  }
}

/** The whole request body, decompressed as it streams in. */
async function readBody(req: IncomingMessage): Promise<Buffer> {
  const encoding = req.headers['content-encoding'];
  let source: AsyncIterable<Buffer> = req;
  let connectionError: unknown;
  if (encoding && encoding.trim().toLowerCase() !== 'identity') {
    const decoder = requestDecoder(encoding);
    req.on('error', (error) => {
      connectionError = error;
      decoder.destroy(error);
    });
    req.pipe(decoder);
    source = decoder;
  }
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of source) chunks.push(chunk);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    // The client left mid-body: its own doing, not a server failure to log (and there is nobody left to answer).
    if (source === req || error === connectionError) throw new ClickHouseException(210, 'NETWORK_ERROR', `The client closed the connection before sending the whole request: ${detail}`);
    throw new ClickHouseException(271, 'CANNOT_DECOMPRESS', `Cannot decompress the request body (${encoding}): ${detail}`);
  }
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
}

type ResponseCodec = 'gzip' | 'deflate' | 'br';

function responseCodec(req: IncomingMessage, url: URL): ResponseCodec | undefined {
  if (url.searchParams.get('enable_http_compression') !== '1') return undefined;
  const accepted = String(req.headers['accept-encoding'] ?? '')
    .split(',')
    .map((e) => e.split(';')[0].trim().toLowerCase());
  return accepted.find((e): e is ResponseCodec => e === 'gzip' || e === 'deflate' || e === 'br');
}

/** The most a response body writes before waiting for the client to take it; the send timeout bounds each such wait. */
const SEND_PIECE_BYTES = 1 << 16;

/** Writes a response body with backpressure, compressed when the client asked for it. */
class ResponseBody {
  private readonly sink: Writable;

  constructor(
    private readonly res: ServerResponse,
    codec: ResponseCodec | undefined,
    level: number,
    private readonly sendTimeoutMs: number,
  ) {
    res.on('close', () => {
      if (this.gone && this.sink !== res) this.sink.destroy();
    });
    if (codec === undefined) {
      this.sink = res;
      return;
    }
    res.setHeader('Content-Encoding', codec);
    const compressor =
      codec === 'gzip'
        ? zlib.createGzip({ level })
        : codec === 'deflate'
          ? zlib.createDeflate({ level })
          : zlib.createBrotliCompress({ params: { [zlib.constants.BROTLI_PARAM_QUALITY]: Math.min(level, 11) } });
    compressor.on('error', () => res.destroy());
    compressor.pipe(res);
    this.sink = compressor;
  }

  /**
   * The client went away; nothing more will be read. Read from the response
   * itself, not from its 'close' event: a client can leave before this body
   * exists (while the engine computes the first rows), and a write to a
   * closed response returns false with no 'drain' or 'close' to follow.
   */
  get gone(): boolean {
    return this.res.closed && !this.res.writableFinished;
  }

  async write(chunk: Uint8Array): Promise<void> {
    // In pieces, so the send timeout measures a client that stopped reading, not one slowly reading a block of many MB.
    for (let at = 0; at < chunk.length && !this.gone; at += SEND_PIECE_BYTES) await this.writePiece(chunk.subarray(at, at + SEND_PIECE_BYTES));
  }

  private async writePiece(chunk: Uint8Array): Promise<void> {
    if (!this.sink.write(chunk)) {
      await new Promise<void>((done) => {
        const timer = this.giveUpAfterSendTimeout();
        const finish = () => {
          clearTimeout(timer);
          this.sink.off('drain', finish);
          this.res.off('close', finish);
          done();
        };
        this.sink.on('drain', finish);
        this.res.on('close', finish);
      });
    }
  }

  async end(): Promise<void> {
    if (this.gone) return;
    await new Promise<void>((done) => {
      const timer = this.giveUpAfterSendTimeout();
      const finish = () => {
        clearTimeout(timer);
        done();
      };
      this.res.once('finish', finish);
      this.res.once('close', finish);
      this.sink.end();
    });
  }

  /**
   * A client that stays connected but reads nothing would otherwise be waited
   * for for ever, holding the query's engine stream; like ClickHouse's
   * http_send_timeout, drop its connection once a send waits that long.
   */
  private giveUpAfterSendTimeout(): NodeJS.Timeout {
    return setTimeout(() => this.res.destroy(), this.sendTimeoutMs);
  }
}

/** A process-wide turn for queries with bound parameters, as chdb's own API takes. */
class ParamTurns {
  private tail: Promise<void> = Promise.resolve();

  async acquire(): Promise<() => void> {
    let release!: () => void;
    const turn = new Promise<void>((done) => (release = done));
    const previous = this.tail;
    this.tail = previous.then(() => turn);
    await previous;
    return release;
  }
}

interface HttpSession {
  session: Session;
  tail: Promise<void>;
  pending: number;
  timer?: NodeJS.Timeout;
}

/**
 * Each request gets its own engine connection, so settings and USE never
 * leak between requests; a session_id keeps one connection, and runs its
 * requests one at a time, until it idles out.
 */
class Connections {
  private readonly sessions = new Map<string, HttpSession>();

  constructor(private readonly dataDir: string) {}

  async run<T>(request: ParsedRequest, work: (connection: unknown) => Promise<T>): Promise<T> {
    if (request.sessionId === undefined) {
      const session = new Session(this.dataDir);
      try {
        return await work(session.connection);
      } finally {
        session.close();
      }
    }
    const id = request.sessionId;
    let entry = this.sessions.get(id);
    if (entry === undefined) {
      entry = { session: new Session(this.dataDir), tail: Promise.resolve(), pending: 0 };
      this.sessions.set(id, entry);
    }
    const held = entry;
    clearTimeout(held.timer);
    held.pending++;
    const result = held.tail.then(() => work(held.session.connection));
    held.tail = result.then(
      () => undefined,
      () => undefined,
    );
    void held.tail.then(() => {
      held.pending--;
      if (held.pending > 0 || this.sessions.get(id) !== held) return;
      if (request.closeSession || request.sessionTimeoutMs === 0) this.drop(id);
      else held.timer = setTimeout(() => this.drop(id), request.sessionTimeoutMs).unref();
    });
    return result;
  }

  private drop(id: string): void {
    const entry = this.sessions.get(id);
    if (entry === undefined) return;
    this.sessions.delete(id);
    clearTimeout(entry.timer);
    entry.session.close();
  }

  /** Call only when no request is running. */
  closeAll(): void {
    for (const id of [...this.sessions.keys()]) this.drop(id);
  }
}

class ChdbHttpHandler {
  private readonly paramTurns = new ParamTurns();

  constructor(
    private readonly native: ChdbNative,
    private readonly connections: Connections,
    private readonly version: string,
    private readonly timezone: string,
    private readonly log: (message: string) => void,
    private readonly ownPaths: Record<string, OwnPathHandler>,
  ) {}

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const queryId = url.searchParams.get('query_id') || randomUUID();
    res.setHeader('X-ClickHouse-Query-Id', queryId);
    res.setHeader('X-ClickHouse-Timezone', this.timezone);
    try {
      if (url.pathname === '/ping' || (url.pathname === '/' && req.method !== 'POST' && !url.searchParams.has('query'))) {
        req.resume();
        res.writeHead(200, { 'Content-Type': 'text/html; charset=UTF-8' }).end('Ok.\n');
        return;
      }
      if (url.pathname !== '/') {
        if (Object.hasOwn(this.ownPaths, url.pathname)) return this.ownPaths[url.pathname](req, res, url);
        req.resume();
        res.writeHead(404, { 'Content-Type': 'text/plain; charset=UTF-8' }).end(`There is no handle ${url.pathname}\n`);
        return;
      }
      if (req.method !== 'GET' && req.method !== 'POST') {
        throw new ClickHouseException(48, 'NOT_IMPLEMENTED', `HTTP method ${req.method} is not supported`);
      }
      const request = parseRequest(url, await readBody(req), req.headers);
      const level = Number(url.searchParams.get('http_zlib_compression_level') ?? 3);
      // Seconds, as ClickHouse reads it; an invalid or non-positive value keeps its default.
      const sendTimeout = Number(url.searchParams.get('http_send_timeout') ?? 30);
      const body = () =>
        new ResponseBody(res, responseCodec(req, url), Number.isInteger(level) && level >= 1 && level <= 9 ? level : 3, (sendTimeout > 0 ? sendTimeout : 30) * 1000);
      await this.connections.run(request, (connection) => this.execute(connection, request, res, body));
    } catch (error) {
      this.sendError(res, error);
    }
  }

  private async execute(connection: unknown, request: ParsedRequest, res: ServerResponse, body: () => ResponseBody): Promise<void> {
    // A client that left while this request waited for its session's earlier ones (a request timeout) gets
    // nothing from it: running it anyway holds up the session's later requests, and applies a write nobody waits
    // for. chdb's own API skips queued queries whose caller gave up too.
    if (res.closed) return;
    const setup: string[] = [];
    if (request.database !== undefined) setup.push(`USE ${quoteIdentifier(request.database)}`);
    if (request.settings.length > 0) setup.push(`SET ${request.settings.map(([k, v]) => `${k} = ${quoteString(v)}`).join(', ')}`);
    if (setup.length > 0) await this.native.QueryAsyncConnection(connection, setup.join('; '), 'TabSeparated');

    if (request.insert !== undefined) {
      const { prefix, data } = request.insert;
      const result = isBlank(data)
        ? { elapsed: 0, rowsWritten: 0, bytesWritten: 0 }
        : await this.native.InsertRawAsyncConnection(connection, prefix, data, false);
      res.writeHead(200, {
        'Content-Type': 'text/plain; charset=UTF-8',
        'Content-Length': '0',
        'X-ClickHouse-Summary': summaryHeader({ writtenRows: result.rowsWritten, writtenBytes: result.bytesWritten, elapsed: result.elapsed }),
      });
      res.end();
      return;
    }

    const sql = request.sql ?? '';
    const shape = sqlShape(sql);
    if (shape.keyword === undefined) throw SYNTAX_ERROR('Empty query');
    if (shape.multiStatement) throw SYNTAX_ERROR('Multi-statements are not allowed');
    const format = shape.format ?? request.format;
    const bound = Object.keys(request.params).length > 0 ? request.params : undefined;
    const release = bound ? await this.paramTurns.acquire() : undefined;
    let released = false;
    const releaseTurn = () => {
      if (!released && release) release();
      released = true;
    };
    try {
      // Likewise for a client that left while this query waited for the turn, which it would otherwise hold from
      // every later parameterised query.
      if (res.closed) return;
      if (!request.buffered && (await this.stream(connection, sql, request.format, bound, format, res, body, releaseTurn))) return;
      const result = bound
        ? await this.native.QueryAsyncConnection(connection, sql, request.format, bound)
        : await this.native.QueryAsyncConnection(connection, sql, request.format);
      releaseTurn();
      const bytes = Buffer.from(result.bytes.buffer, result.bytes.byteOffset, result.bytes.byteLength);
      res.statusCode = 200;
      res.setHeader('Content-Type', contentTypeFor(format));
      res.setHeader('X-ClickHouse-Format', format);
      res.setHeader('X-ClickHouse-Summary', summaryHeader({ readRows: result.rowsRead, readBytes: result.bytesRead, elapsed: result.elapsed }));
      const out = body();
      if (!res.hasHeader('Content-Encoding')) res.setHeader('Content-Length', String(bytes.length));
      await out.write(bytes);
      await out.end();
    } finally {
      releaseTurn();
    }
  }

  /**
   * Streams a SELECT's result as the engine produces it. Returns false when
   * the engine cannot stream this statement (DDL, INSERT, SHOW...), which
   * then runs buffered. An error after the first bytes are out is reported
   * with ClickHouse's exception tag, which @clickhouse/client recognises.
   */
  private async stream(
    connection: unknown,
    sql: string,
    defaultFormat: string,
    bound: BoundParams | undefined,
    format: string,
    res: ServerResponse,
    body: () => ResponseBody,
    releaseTurn: () => void,
  ): Promise<boolean> {
    let handle: unknown;
    try {
      handle = bound
        ? this.native.StreamQuery(connection, sql, defaultFormat, bound)
        : this.native.StreamQuery(connection, sql, defaultFormat);
    } catch (error) {
      if (/Streaming query is not supported/.test(error instanceof Error ? error.message : String(error))) return false;
      throw error;
    }
    let out: ResponseBody | undefined;
    // The engine frees a stream itself once it ends or fails; cancel only one cut short.
    let open = true;
    const fetch = async () => {
      try {
        const chunk = await this.native.StreamFetch(handle);
        if (chunk.done) open = false;
        return chunk;
      } catch (error) {
        open = false;
        throw error;
      }
    };
    const tag = randomBytes(8).toString('hex');
    try {
      let chunk = await fetch();
      releaseTurn();
      res.statusCode = 200;
      res.setHeader('Content-Type', contentTypeFor(format));
      res.setHeader('X-ClickHouse-Format', format);
      res.setHeader('X-ClickHouse-Summary', summaryHeader({}));
      res.setHeader('X-ClickHouse-Exception-Tag', tag);
      out = body();
      while (!chunk.done && !out.gone) {
        await out.write(chunk.bytes);
        chunk = await fetch();
      }
      await out.end();
    } catch (error) {
      if (out === undefined) throw error;
      const message = toEngineError(error).message;
      this.log(`query failed while streaming its result: ${message}`);
      await out.write(Buffer.from(`\r\n__exception__\r\n${tag}\n${message}\n${Buffer.byteLength(message) + 1} ${tag}\r\n__exception__\r\n`));
      await out.end();
    } finally {
      // Only here, with no fetch in flight: cancelling frees the handle a fetch reads.
      if (open) this.native.StreamCancel(handle);
    }
    return true;
  }

  private sendError(res: ServerResponse, error: unknown): void {
    const failure = toEngineError(error);
    if (failure.code === 1001) this.log(`request failed: ${failure.message}`);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const message = /\(version [^)]*\)\s*$/.test(failure.message) ? failure.message : `${failure.message} (version ${this.version})`;
    res.removeHeader('Content-Encoding');
    res.removeHeader('Content-Length');
    res.writeHead(httpStatusFor(failure.type), {
      'Content-Type': 'text/plain; charset=UTF-8',
      'X-ClickHouse-Exception-Code': String(failure.code),
    });
    res.end(`${message}\n`);
  }
}

/** Where a client reaches a server listening on `host` and `port` (an IPv6 address in brackets; 'any address' as loopback). */
export function serverUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`;
}

/** How long a new server waits for a stopping one to let go of the data directory (see openDataDir): within the 30 s the resolver gives a start, so its own reason is the one told. */
const DATA_DIR_WAIT_MS = 15_000;

/**
 * Opens the data directory. A server on it that is stopping closes its port
 * (the lock the resolver goes by) first and the directory last, after its
 * requests have settled: a server started in between, on the freed port,
 * failed to open the directory and exited, and the command that started it
 * with it. The engine's status file names the process that holds the
 * directory; while that process lives, this one waits (bounded), then opens.
 */
async function openDataDir(dataDir: string, log: (message: string) => void): Promise<Session> {
  const deadline = Date.now() + DATA_DIR_WAIT_MS;
  let told = false;
  let unheld = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      return new Session(dataDir);
    } catch (error) {
      const holder = statusPid(dataDir);
      const held = holder !== undefined && holder !== process.pid && processAlive(holder);
      if (!held) {
        // No live holder (the file gone, or naming a process that has ended): let go of a moment ago, worth a
        // few more tries; after those the failure is not a server stopping, and stands.
        if (++unheld > 3) throw error;
      } else if (Date.now() >= deadline) {
        throw new Error(`the data directory ${dataDir} is held by process ${holder} (another local ClickHouse on it?): ${errorText(error)}`, { cause: error });
      }
      if (held && !told) {
        log(`the data directory is still held by process ${holder} (a server stopping?): waiting for it`);
        told = true;
      }
      // Each failed open prints the engine's "Cannot lock file" to stderr: 100 ms, then longer, to at most 1 s.
      await new Promise((done) => setTimeout(done, Math.min(100 * attempt, 1_000)));
    }
  }
}

/** The process the engine's status file names ("PID: 1234"), while the directory is open; undefined without one. */
function statusPid(dataDir: string): number | undefined {
  try {
    const pid = /^PID: (\d+)$/m.exec(readFileSync(join(dataDir, 'status'), 'utf8'))?.[1];
    return pid === undefined ? undefined : Number(pid);
  } catch {
    return undefined;
  }
}

export async function startChdbHttpServer(options: ChdbHttpServerOptions): Promise<ChdbHttpServer> {
  const host = options.host ?? '127.0.0.1';
  const dataDir = resolve(options.dataDir);
  const log = options.log ?? (() => undefined);
  const native = loadNative();

  const connections = new Connections(dataDir);
  let root: Session | undefined;
  let ready!: (handler: ChdbHttpHandler) => void;
  let failed!: (error: unknown) => void;
  const engine = new Promise<ChdbHttpHandler>((done, fail) => ((ready = done), (failed = fail)));
  engine.catch(() => undefined);

  // ClickHouse takes a URI up to http_max_uri_size (1 MiB) and the client binds query parameters in it;
  // Node's default 16 KiB refused a 1000-key lookup (backfill --gaps, verify --repair) with a bare 431.
  const server = createServer({ maxHeaderSize: MAX_REQUEST_HEAD_BYTES });
  server.requestTimeout = 0;
  const inflight = new Set<Promise<void>>();
  // Requests that arrive while the engine opens (a concurrent resolver pinging) wait for it.
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const work = engine
      .then((handler) => handler.handle(req, res))
      .catch((error: unknown) => {
        log(`request handler failed: ${error instanceof Error ? error.message : String(error)}`);
        res.destroy();
      });
    inflight.add(work);
    void work.finally(() => inflight.delete(work));
  });

  // Listen before opening the data directory: a second server that lost the
  // race for the port must never touch data another process owns.
  await new Promise<void>((done, fail) => {
    server.once('error', fail);
    server.listen(options.port, host, () => {
      server.off('error', fail);
      done();
    });
  });

  let version: string;
  try {
    mkdirSync(dataDir, { recursive: true });
    root = await openDataDir(dataDir, log);
    const info = await native.QueryAsyncConnection(root.connection, 'SELECT version(), timezone()', 'TabSeparated');
    const [engineVersion, timezone] = Buffer.from(info.bytes).toString('utf8').trim().split('\t');
    version = engineVersion;
    ready(new ChdbHttpHandler(native, connections, version, timezone, log, options.ownPaths ?? {}));
  } catch (error) {
    failed(error);
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
    root?.close();
    throw error;
  }

  const port = (server.address() as AddressInfo).port;
  const opened = root;
  let closing: Promise<void> | undefined;
  const close = async (): Promise<void> => {
    const closed = new Promise<void>((done) => server.close(() => done()));
    server.closeIdleConnections();
    const settled = () => Promise.allSettled([...inflight]);
    await Promise.race([settled(), new Promise((done) => setTimeout(done, 5_000).unref())]);
    server.closeAllConnections();
    await closed;
    // Native calls cannot be interrupted, and a query computing its first rows may run for hours; as ClickHouse
    // does when its grace period ends, cancel what is left, so those calls fail at the engine's next block.
    if (inflight.size > 0) {
      await native.QueryAsyncConnection(opened.connection, 'KILL QUERY WHERE query_id != queryID() ASYNC', 'TabSeparated').catch((error: unknown) => {
        log(`could not cancel the queries left at stop: ${error instanceof Error ? error.message : String(error)}`);
      });
    }
    // Their connections close once they return.
    while (inflight.size > 0) await settled();
    connections.closeAll();
    opened.close();
  };

  return {
    port,
    url: serverUrl(host, port),
    version,
    close: () => (closing ??= close()),
  };
}
