import { Injectable } from '@nestjs/common';

/**
 * Whether this process has been told to stop. From the signal on, /health
 * answers 503 "shutting down" while the API goes on serving for
 * SHUTDOWN_DELAY_MS: a load balancer (a Kubernetes endpoint update) takes a
 * few seconds to stop routing here, and connections it opens meanwhile would
 * otherwise be refused.
 */
@Injectable()
export class ShutdownState {
  private signalled = false;

  get shuttingDown(): boolean {
    return this.signalled;
  }

  begin(): void {
    this.signalled = true;
  }
}
