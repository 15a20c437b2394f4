/** The app's prom-client Registry (one per app instance, so tests don't collide). */
export const METRICS_REGISTRY = Symbol('METRICS_REGISTRY');
