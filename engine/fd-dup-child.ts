/**
 * Child process of engine/shared-listener.ts: receives the engine's listening
 * socket once over IPC and sends it back `copies` times. Each send makes a
 * new descriptor in the engine (SCM_RIGHTS), which is the point: Node has no
 * dup(2). The child never listens or accepts; it exits when the engine
 * disconnects, or after 10 s whatever happens.
 */
const LIFETIME_MS = 10_000;

setTimeout(() => process.exit(1), LIFETIME_MS).unref();
process.once('disconnect', () => process.exit(0));
process.once('message', (m: { copies?: unknown }, handle: unknown) => {
  const copies = typeof m?.copies === 'number' ? m.copies : 0;
  if (handle === undefined || handle === null || copies <= 0 || process.send === undefined) process.exit(1);
  let sent = 0;
  const next = (): void => {
    if (sent === copies) return; // the engine disconnects once it has them all
    sent++;
    process.send!({ copy: sent }, handle as never, { keepOpen: true }, (err: Error | null) => {
      if (err) process.exit(1);
      next();
    });
  };
  next();
});
