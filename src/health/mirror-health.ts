/** What the mirror reports to /health; always provided by the dual-write room (`enabled: false` with the flag off). */
export const MIRROR_HEALTH = Symbol('MIRROR_HEALTH');

export interface MirrorHealth {
  status(): Promise<Record<string, unknown>>;
}
