import { EdgeTrustError, type Logger } from "../common/index.js";
import { iotEdgeApiVersionQuery, iotEdgeCertificateBody, iotEdgeModuleParams, iotEdgeSignBody } from "../identity-api/index.js";
import type { ApiRequest, Route } from "./api-server.js";
import type { AttestedModule } from "./attested-modules.js";

/**
 * The Azure IoT Edge workload API (iotedged's `workload.sock`), on each module's own socket, as the Azure IoT SDKs
 * call it from `ModuleClient.fromEnvironment()`:
 *   GET  /trust-bundle?api-version=…                               → {certificate: PEM bundle}
 *   POST /modules/{m}/genid/{g}/sign?api-version=…  {keyId, algo, data}  → {digest}: HMAC-SHA256 with the module's
 *        HSM key, only over a SAS string-to-sign for this module (see SasKeys.sign)
 *   POST /modules/{m}/genid/{g}/certificate/identity|server?api-version=…
 * iotedged answers the certificate routes with a private key it made; edgetrust never hands out private keys, so
 * they take the module's CSR (`{csr}`, an extension of the request) and refuse without one, saying so.
 * Every route is served only to a caller inside the module's container while it runs its attested digest.
 */

/** Workload API versions of iotedged; the SDKs send one of them (azure-iot-device 1.18: 2018-06-28). */
const IOTEDGE_API_VERSIONS = ["2018-06-28", "2019-01-30", "2019-11-05", "2020-07-07", "2021-12-07"] as const;
const IOTEDGE_API_VERSION = "2018-06-28";

interface IotEdgeWorkloadDeps {
  module: string;
  /** The registered module, once the caller is known to be inside its container; throws FORBIDDEN otherwise. */
  authorize(req: ApiRequest): Promise<AttestedModule>;
  /** HMAC-SHA256 over `data` with the module's key for `generationId` (after checking its container). */
  sign?(m: AttestedModule, generationId: string, data: Buffer): Promise<Buffer>;
  issue(m: AttestedModule, csr: string): Promise<{ certificate: string; chain: string[]; notAfter: string }>;
  trustBundle(): string[];
  log: Logger;
}

function apiVersion(req: ApiRequest): void {
  const v = (req.query as { "api-version"?: string })["api-version"];
  if (v === undefined) throw new EdgeTrustError("INVALID_INPUT", "the api-version query parameter is required", { hint: `e.g. ?api-version=${IOTEDGE_API_VERSION}` });
  if (!(IOTEDGE_API_VERSIONS as readonly string[]).includes(v)) {
    throw new EdgeTrustError("INVALID_INPUT", `api-version ${JSON.stringify(v)} is not supported`, { hint: `supported: ${IOTEDGE_API_VERSIONS.join(", ")}` });
  }
}

export function iotEdgeWorkloadRoutes(d: IotEdgeWorkloadDeps): Route[] {
  const own = (req: ApiRequest): { genid: string } => {
    const p = req.params as { name: string; genid: string };
    // The socket is the module's identity: asking for another module's key on it is refused, whoever asks.
    if (p.name !== d.module) throw new EdgeTrustError("FORBIDDEN", `this is module ${d.module}'s workload socket, not ${p.name}'s`);
    return { genid: p.genid };
  };
  const routes: Route[] = [
    {
      method: "GET", path: "/trust-bundle", query: iotEdgeApiVersionQuery,
      handler: async (req) => {
        apiVersion(req);
        await d.authorize(req);
        return { certificate: d.trustBundle().map((p) => p.trim() + "\n").join("") };
      },
    },
    {
      method: "POST", path: "/modules/:name/genid/:genid/sign", query: iotEdgeApiVersionQuery, params: iotEdgeModuleParams, body: iotEdgeSignBody,
      handler: async (req) => {
        apiVersion(req);
        const { genid } = own(req);
        const m = await d.authorize(req);
        const body = req.body as { keyId: string; algo: string; data: string };
        if (body.algo !== "HMACSHA256") throw new EdgeTrustError("INVALID_INPUT", `algo ${JSON.stringify(body.algo)} is not supported`, { hint: "HMACSHA256" });
        if (body.keyId !== "primary") throw new EdgeTrustError("INVALID_INPUT", `keyId ${JSON.stringify(body.keyId)} is not supported`, { hint: "each module has one key: primary" });
        if (!d.sign) throw new EdgeTrustError("FORBIDDEN", `module ${m.name} is not granted SAS authentication`);
        const digest = await d.sign(m, genid, Buffer.from(body.data, "base64"));
        d.log.info({ module: m.name, generationId: genid }, "SAS token signed");
        return { digest: digest.toString("base64") };
      },
    },
  ];
  for (const kind of ["identity", "server"] as const) {
    routes.push({
      method: "POST", path: `/modules/:name/genid/:genid/certificate/${kind}`, query: iotEdgeApiVersionQuery, params: iotEdgeModuleParams, body: iotEdgeCertificateBody,
      handler: async (req) => {
        apiVersion(req);
        const { genid } = own(req);
        const m = await d.authorize(req);
        if (m.generationId !== undefined && genid !== m.generationId) throw new EdgeTrustError("FORBIDDEN", `generation ${genid} of module ${m.name} is not the registered one`);
        const csr = (req.body as { csr?: string }).csr;
        if (kind === "server") throw new EdgeTrustError("FORBIDDEN", "module server certificates are not issued on this device", { hint: "modules reach each other through the hub" });
        if (!csr) {
          throw new EdgeTrustError("FORBIDDEN", "edgetrust never hands out private keys: send the module's own CSR as {csr}", { hint: "or POST /v1/certificate {csr}; the key stays in the module" });
        }
        const issued = await d.issue(m, csr);
        return { certificate: [issued.certificate, ...issued.chain].map((p) => p.trim() + "\n").join(""), expiration: issued.notAfter };
      },
    });
  }
  return routes;
}
