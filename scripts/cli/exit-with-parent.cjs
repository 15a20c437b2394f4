// Preloaded (node --require) into the API processes that startApiProcess starts, for the test suites and for
// `npm run load`: the API shuts down (SIGTERM, its graceful shutdown) when the process that started it has
// died, however it died. Its stdin is a pipe from that process, which the kernel closes then. Without this,
// a load killed with -9 left the API it had started running for good.
const parentGone = () => process.kill(process.pid, 'SIGTERM');
process.stdin.once('end', parentGone);
process.stdin.once('error', parentGone);
process.stdin.resume();
// Watching must not keep the API alive by itself.
process.stdin.unref();
