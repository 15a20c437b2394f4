/**
 * A refusal the operator fixes from its message alone (a bad setting, a
 * schema behind the build): main.ts prints the message by itself, without a
 * stack, and exits non-zero.
 */
export class OperatorError extends Error {}
