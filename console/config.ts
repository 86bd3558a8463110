import { Type, type Static } from "@sinclair/typebox";

/** `console:` section of edgetrust.yaml — the security console `ca serve` serves under /console. */
export const ConsoleConfig = Type.Object(
  {
    enabled: Type.Boolean({ default: true, description: "Serve the security console at /console on the CA's HTTPS listener" }),
    sessionTtlSeconds: Type.Integer({ minimum: 1, maximum: 86400, default: 1800, description: "Lifetime of a console session from sign-in (absolute; the cookie and the server row expire together)" }),
    pageSize: Type.Integer({ minimum: 10, maximum: 500, default: 50, description: "Rows per page of the fleet, rollout and audit tables" }),
  },
  { additionalProperties: false, default: {}, description: "Security console (fleet, devices, lines, deployments, audit, policy) for admin and auditor principals" },
);
export type ConsoleConfig = Static<typeof ConsoleConfig>;
