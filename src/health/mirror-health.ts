/** What the mirror reports to /health; provided by the dual-write room when the mirror is on. */
export const MIRROR_HEALTH = Symbol('MIRROR_HEALTH');

export interface MirrorHealth {
  status(): Promise<Record<string, unknown>>;
}
