import { Command } from "commander";
import { action, emit, type ConfigReader } from "../common/index.js";
import { openKeyStore, type HsmConfig, type KeyStore } from "../hsm/index.js";
import { createDevPki } from "./generate.js";

/** The sections of edgetrust.yaml these commands read (the command tree hands in a reader of the whole file). */
type CertsDevConfig = { hsm: HsmConfig };

interface CreateOpts {
  out: string;
  trustDomain: string;
  device: string;
  modules: string;
  hostName?: string;
  leaf?: string;
  caUrl: string;
  hsmConfig?: string;
  force?: boolean;
  json?: boolean;
}

/** `edgetrust certs-dev create`. */
function createCommand(readConfig: ConfigReader<CertsDevConfig>): Command {
  return new Command("create")
    .description("write a development root, issuing CA, device identity, Edge CA, edge hub, module and leaf certificates + keys")
    .requiredOption("--out <dir>", "output directory (must be empty unless --force)")
    .option("--trust-domain <domain>", "trust domain of the edgetrust:// identities", "example.com")
    .option("--device <id>", "device id", "dev1")
    .option("--modules <list>", "comma-separated module names", "tempSensor")
    .option("--host-name <name>", "device host name (edge hub SAN, Edge CA name constraints); default <device>.local")
    .option("--leaf <id>", "leaf device id; default <device>-leaf1")
    .option("--ca-url <url>", "base URL written into CRL distribution point and OCSP pointers", "http://127.0.0.1:8443")
    .option("--hsm-config <file>", "edgetrust.yaml whose hsm: section holds the CA, device and hub keys (they stay in the token)")
    .option("--force", "overwrite a non-empty output directory")
    .option("--json", "print the manifest as JSON")
    .action(action(async (opts: CreateOpts) => {
      let keyStore: KeyStore | undefined;
      if (opts.hsmConfig) {
        const cfg = readConfig({ file: opts.hsmConfig, required: true });
        keyStore = await openKeyStore(cfg.hsm);
      }
      try {
        const manifest = await createDevPki({
          out: opts.out,
          trustDomain: opts.trustDomain,
          deviceId: opts.device,
          modules: opts.modules.split(",").map((m) => m.trim()).filter(Boolean),
          hostName: opts.hostName,
          leafDeviceId: opts.leaf,
          caUrl: opts.caUrl,
          force: Boolean(opts.force),
          keyStore,
        });
        emit(Boolean(opts.json), { ok: true, out: opts.out, ...manifest }, () => [
          `wrote a DEVELOPMENT PKI to ${opts.out} (never use it in production):`,
          ...manifest.files.map((f) => `  ${f.path.padEnd(34)} ${f.description}`),
          `  ${"manifest.json".padEnd(34)} what each file is`,
        ].join("\n"));
      } finally {
        await keyStore?.close();
      }
    }));
}

export function certsDevCommand(readConfig: ConfigReader<CertsDevConfig>): Command {
  const cmd = new Command("certs-dev").description("Development PKI generator (never for production)");
  cmd.addCommand(createCommand(readConfig));
  return cmd;
}
