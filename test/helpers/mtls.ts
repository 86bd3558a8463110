import tls from "node:tls";
import type { AddressInfo } from "node:net";

/** What one mTLS exchange produced (JSON-serialisable so a child process can report it). */
export interface MtlsOutcome {
  serverGot?: string;
  clientGot?: string;
  peerAtServer?: { cn?: string; san?: string };
  peerAtClient?: { cn?: string; san?: string };
  serverError?: string;
  clientError?: string;
}

export interface MtlsSpec {
  ca: string;
  server: { cert: string; key: Record<string, string> };
  client?: { cert: string; key: Record<string, string> };
  servername: string;
}

/** One mTLS exchange on loopback: the client writes "ping", the server answers "pong <client CN>". */
export async function mtlsExchange(spec: MtlsSpec, make: (o: tls.SecureContextOptions) => tls.SecureContext = tls.createSecureContext): Promise<MtlsOutcome> {
  const outcome: MtlsOutcome = {};
  // tls.createServer takes the context options themselves (it ignores a `secureContext` option).
  const server = tls.createServer({
    cert: spec.server.cert, ...spec.server.key, ca: spec.ca, requestCert: true, rejectUnauthorized: true,
  }, (sock) => {
    const peer = sock.getPeerCertificate();
    outcome.peerAtServer = { cn: String(peer.subject?.CN ?? ""), san: peer.subjectaltname };
    sock.once("data", (d: Buffer) => {
      outcome.serverGot = d.toString();
      sock.end(`pong ${peer.subject?.CN ?? "?"}`);
    });
    sock.on("error", () => undefined);
  });
  server.on("tlsClientError", (e) => { outcome.serverError = e.message; });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const port = (server.address() as AddressInfo).port;
  const clientCtx = make({ ca: spec.ca, ...(spec.client ? { cert: spec.client.cert, ...spec.client.key } : {}) });
  await new Promise<void>((res) => {
    const client = tls.connect({ host: "127.0.0.1", port, servername: spec.servername, secureContext: clientCtx }, () => {
      const peer = client.getPeerCertificate();
      outcome.peerAtClient = { cn: String(peer.subject?.CN ?? ""), san: peer.subjectaltname };
      client.write("ping");
    });
    let got = "";
    client.on("data", (d: Buffer) => { got += d.toString(); });
    client.on("error", (e) => { outcome.clientError = e.message; });
    client.on("close", () => {
      if (got) outcome.clientGot = got;
      res();
    });
  });
  await new Promise<void>((res) => server.close(() => res()));
  return outcome;
}
