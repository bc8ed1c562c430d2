/**
 * A TCP port on 127.0.0.1 that nothing listens on right now: bound to an
 * ephemeral port, then released. Used for a listener a test starts on a
 * port it must know beforehand, and as an upstream target whose connects
 * are refused. (Another process may take it meanwhile: tests pick it just
 * before use.)
 */
import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}
