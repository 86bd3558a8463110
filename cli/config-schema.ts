import { Type, type Static } from "@sinclair/typebox";
import { HsmConfig } from "../hsm/config.js";
import { HubConfig } from "../edge-hub/config.js";
import { CaConfig } from "../ca-service/config.js";
import { DeviceConfig } from "../device-identity/config.js";
import { AgentConfig } from "../edge-agent/config.js";
import { ConsoleConfig } from "../console/config.js";

/** The whole edgetrust.yaml: one section per component. Each section's schema lives beside its component. */
export const EdgeTrustConfig = Type.Object(
  {
    log: Type.Object(
      {
        level: Type.Union([Type.Literal("trace"), Type.Literal("debug"), Type.Literal("info"), Type.Literal("warn"), Type.Literal("error")], {
          default: "info",
          description: "pino log level",
        }),
      },
      { additionalProperties: false, default: {}, description: "Logging (JSON lines on stderr)" },
    ),
    hsm: HsmConfig,
    hub: HubConfig,
    ca: CaConfig,
    device: DeviceConfig,
    agent: AgentConfig,
    console: ConsoleConfig,
  },
  { additionalProperties: false },
);
export type EdgeTrustConfigFile = Static<typeof EdgeTrustConfig>;
