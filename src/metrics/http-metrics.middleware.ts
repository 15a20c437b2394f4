import { Inject, Injectable, NestMiddleware } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';
import { Histogram, Registry } from 'prom-client';
import { METRICS_REGISTRY } from './metrics.tokens';

/** Request duration by method, matched route (not raw URL: ids would explode the labels; "static" for the OpenAPI UI's files, "unmatched" when nothing answered) and status ("aborted" when the caller left first). */
@Injectable()
export class HttpMetricsMiddleware implements NestMiddleware {
  private readonly duration: Histogram<'method' | 'route' | 'status'>;

  constructor(@Inject(METRICS_REGISTRY) registry: Registry) {
    this.duration = new Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by method, route and status',
      labelNames: ['method', 'route', 'status'],
      // Up to a minute: a slow Postgres holds requests to DB_STATEMENT_TIMEOUT_MS (30 s) or DB_CLIENT_TIMEOUT_MS, and a
      // top bucket of 5 s read every such incident as a p99 of 5 s.
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    });
  }

  /** Mounted with app.use (see MetricsModule), ahead of every route: req.route is set only once a controller's route takes the request. */
  use(req: Request, res: Response, next: NextFunction): void {
    const end = this.duration.startTimer();
    let observed = false;
    const observe = (status: string) => {
      if (observed) return;
      observed = true;
      // A request no route took (a path the router could not decode) has no req.route, and a 404 has the last
      // middleware mount it went through: Nest mounts its modules' middleware (pino-http's) with Express's
      // app.all('/{*path}'), a route registered for every method, where each controller handler is a route of
      // its one method.
      const matched = req.route as { path?: unknown; methods?: Record<string, boolean> } | undefined;
      const routed = typeof matched?.path === 'string' && matched.path !== '' && Object.keys(matched.methods ?? {}).length === 1;
      // Answered well without a route: a file of the OpenAPI UI's, served by express.static under /docs.
      const route = routed ? `${req.baseUrl ?? ''}${matched.path}` : res.statusCode < 400 && status !== 'aborted' ? 'static' : 'unmatched';
      end({ method: req.method, route, status });
    };
    res.on('finish', () => observe(String(res.statusCode)));
    // A caller that went away before its answer (an exporter's timeout while Postgres is slow) never sees
    // 'finish': counted as `aborted`, so an incident's slowest requests are not the ones missing.
    res.on('close', () => observe(res.writableFinished ? String(res.statusCode) : 'aborted'));
    next();
  }
}
