/**
 * Child process for the DPS interop test: the unmodified Azure provisioning device SDK (HTTP transport) registers
 * against the DPS-compatible route. Run with NODE_EXTRA_CA_CERTS set to the test root (the SDK always connects to
 * port 443 of the host it is given). Input: DPS_SPEC (JSON) in the environment; output: one JSON line on stdout.
 */
// CommonJS packages: Node's ESM loader cannot see their named exports, so take the module objects.
import provisioning from "azure-iot-provisioning-device";
import provisioningHttp from "azure-iot-provisioning-device-http";
import securityX509 from "azure-iot-security-x509";
import securitySymmetric from "azure-iot-security-symmetric-key";

const { ProvisioningDeviceClient } = provisioning;
const { Http } = provisioningHttp;
const { X509Security } = securityX509;
const { SymmetricKeySecurityClient } = securitySymmetric;

interface Spec {
  mode: "x509" | "symmetricKey";
  host: string;
  idScope: string;
  registrationId: string;
  cert?: string;
  key?: string;
  symmetricKey?: string;
  payload: Record<string, string>;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.env.DPS_SPEC ?? "{}") as Spec;
  const transport = new Http();
  const client = spec.mode === "x509"
    ? ProvisioningDeviceClient.create(spec.host, spec.idScope, transport, new X509Security(spec.registrationId, { cert: spec.cert ?? "", key: spec.key ?? "" }))
    : ProvisioningDeviceClient.create(spec.host, spec.idScope, transport, 
      // Two copies of azure-iot-common make the SharedAccessSignature class types differ; the shapes are the same.
      new SymmetricKeySecurityClient(spec.registrationId, spec.symmetricKey ?? "") as unknown as Parameters<typeof ProvisioningDeviceClient.create>[3]);
  client.setProvisioningPayload(spec.payload);
  try {
    const result = await client.register();
    process.stdout.write(JSON.stringify({ ok: true, result }) + "\n");
  } catch (e) {
    const err = e as { name?: string; message?: string; response?: { statusCode?: number }; responseBody?: string };
    process.stdout.write(JSON.stringify({ ok: false, name: err.name, message: err.message, status: err.response?.statusCode, body: err.responseBody }) + "\n");
  }
}

void main();
