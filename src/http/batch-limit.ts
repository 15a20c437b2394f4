import { PayloadTooLargeException } from '@nestjs/common';

/** Refuses an oversize batch with a 413 before any item is parsed. */
export function assertBatchSize(body: unknown, field: string, max: number): void {
  const items = (body as Record<string, unknown> | null)?.[field];
  if (Array.isArray(items) && items.length > max) {
    throw new PayloadTooLargeException(`${field}: at most ${max} per request, got ${items.length}`);
  }
}
