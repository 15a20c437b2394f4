import type { IncomingMessage, ServerResponse } from 'node:http';
import { LOCAL_STOPPING_HEADER } from '../../src/dbs/clickhouse/local-clickhouse';

/**
 * The processes that joined this local server though another one started it:
 * an API started while a backfill ran, a verify beside a running API. The
 * server follows the process that started it (--exit-with-parent); without
 * this it stopped when a short command that happened to start it ended, and
 * the API that had joined it lost ClickHouse (an outage, and gaps).
 *
 * A joiner holds the server by keeping one request open on LOCAL_HOLDERS_PATH
 * (?hold=<pid>) for as long as it runs. The hold ends when its connection
 * closes, and that happens however the joiner ends, kill -9 included, as with
 * the parent's stdin pipe. Without ?hold the path answers the pids holding it.
 *
 * The starter, done with the server, asks `?stop-unless-held=<its pid>`. The
 * answer and every hold are decided here, one at a time: either someone else
 * holds the server (it stays, and the starter lets it follow the joiners), or
 * the server is closing from then on and refuses new holds with 503 (and
 * LOCAL_STOPPING_HEADER), which the joiner reads as a server that stopped (it starts one of its own once
 * the port is free). Before, the starter read the holders and then sent
 * SIGTERM, and a hold that came between the two was cut with the server.
 */
export class ServerHolders {
  private readonly held = new Map<ServerResponse, number>();
  private readonly waiting: Array<() => void> = [];
  private closing = false;

  readonly handle = (req: IncomingMessage, res: ServerResponse, url: URL): void => {
    req.resume();
    const stopper = url.searchParams.get('stop-unless-held');
    if (stopper !== null) {
      // It cannot be undone: a stray GET (a probe, a browser) must not close the server to joiners.
      if (req.method !== 'POST') {
        res.writeHead(405, { Allow: 'POST', 'Content-Type': 'text/plain; charset=UTF-8' }).end('stop-unless-held takes POST\n');
        return;
      }
      const others = this.pids().filter((pid) => String(pid) !== stopper);
      if (others.length === 0) this.closing = true;
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(`${JSON.stringify({ stopping: this.closing, pids: others })}\n`);
      return;
    }
    const hold = url.searchParams.get('hold');
    if (hold === null) {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(`${JSON.stringify({ pids: this.pids() })}\n`);
      return;
    }
    if (!/^\d{1,10}$/.test(hold)) {
      res.writeHead(400, { 'Content-Type': 'text/plain; charset=UTF-8' }).end(`hold must be a process id, got "${hold}"\n`);
      return;
    }
    if (this.closing) {
      // The header tells it from a 503 of any other server on the port (a proxy under load).
      res.writeHead(503, { [LOCAL_STOPPING_HEADER]: 'stopping', 'Content-Type': 'text/plain; charset=UTF-8' }).end('this local ClickHouse is stopping\n');
      return;
    }
    // Headers and a first line now, so the joiner knows it holds the server; the body never ends.
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8' }).write(`held for process ${hold}\n`);
    this.held.set(res, Number(hold));
    res.once('close', () => {
      this.held.delete(res);
      if (this.held.size === 0) this.waiting.splice(0).forEach((done) => done());
    });
  };

  /** Process ids of the joiners holding the server now, one per hold. */
  pids(): number[] {
    return [...this.held.values()];
  }

  /** Settles once no joiner holds the server: at once if none does. */
  none(): Promise<void> {
    if (this.held.size === 0) return Promise.resolve();
    return new Promise((done) => this.waiting.push(done));
  }
}
