import { Span } from './span';

/**
 * The query language of POST /tracing/spans/query and /tracing/analytics/query.
 * A filter is a tree of and/or/not over conditions; `key` addresses a path
 * inside a JSON field (attributes.ag.metrics.costs -> field "attributes",
 * key "ag.metrics.costs"), or, as an array of keys, a path whose keys may hold
 * dots themselves (["gen_ai.request.model"]: the literal key a REST caller
 * stored flat, as REST stores attributes as they are sent).
 */
export const CONDITION_OPERATORS = [
  'is', 'is_not', 'eq', 'neq', 'gt', 'lt', 'gte', 'lte', 'btwn', 'in', 'not_in',
  'contains', 'startswith', 'endswith', 'like', 'exists', 'not_exists', 'has', 'has_not',
] as const;
export const LOGICAL_OPERATORS = ['and', 'or', 'not'] as const;
export const FOCUSES = ['trace', 'span'] as const;

export type ConditionOperator = (typeof CONDITION_OPERATORS)[number];
export type LogicalOperator = (typeof LOGICAL_OPERATORS)[number];
export type Focus = (typeof FOCUSES)[number];

export interface Condition {
  field: string;
  /** The path's keys (array indexes as digits), outermost first. */
  key?: string[];
  operator: ConditionOperator;
  value?: unknown;
}

export interface Filter {
  operator: LogicalOperator;
  conditions: Array<Condition | Filter>;
}

export interface Windowing {
  /** Inclusive lower bound on start_time (ISO-8601). */
  oldest?: string;
  /** Exclusive upper bound on start_time (ISO-8601). */
  newest?: string;
  /** Spans per page (focus span) or traces per page (focus trace). */
  limit?: number;
  order?: 'ascending' | 'descending';
  /** Opaque cursor from the previous page's `next`. */
  next?: string;
}

export interface SpanQuery {
  focus: Focus;
  filter?: Filter;
  windowing?: Windowing;
}

export interface SpanPage {
  spans: Span[];
  /** Pass as windowing.next to get the following page; null on the last page. */
  next: string | null;
}

export interface AnalyticsQuery {
  focus: Focus;
  filter?: Filter;
  /** oldest and newest are required; interval is the bucket width in minutes. */
  windowing: { oldest: string; newest: string; interval: number };
}

export interface AnalyticsMetrics {
  count: number;
  /** Sum of (end_time - start_time) in milliseconds. */
  duration: number;
  costs: number;
  tokens: number;
}

export interface AnalyticsBucket {
  /** Bucket start, ISO-8601. */
  timestamp: string;
  /** Bucket width in minutes. */
  interval: number;
  total: AnalyticsMetrics;
  errors: AnalyticsMetrics;
}

/** A query the caller got wrong: field and reason, answered as a 400. */
export class InvalidQueryError extends Error {
  constructor(readonly field: string, readonly reason: string) {
    super(`${field}: ${reason}`);
    this.name = 'InvalidQueryError';
  }
}
