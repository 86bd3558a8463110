import type { FastifyPluginAsync } from "fastify";
import { Type } from "@sinclair/typebox";
import type { RouteDeps } from "../../shared/route-deps.js";

const CaItem = Type.Object({
  id: Type.String({ description: "hex subject key identifier" }),
  kind: Type.Union([Type.Literal("root"), Type.Literal("issuing")]),
  name: Type.String(),
  status: Type.String(),
  current: Type.Boolean({ description: "true for the issuing CA that signs new certificates" }),
  notBefore: Type.String(),
  notAfter: Type.String(),
  crlUrl: Type.Optional(Type.String()),
  certificatePem: Type.String(),
});

/** Public CA material: roots and issuing CAs (all of them during a rollover) and the PEM trust bundle. */
export const casRoutes: FastifyPluginAsync<RouteDeps> = async (app, { ca, store }) => {
  app.get("/v1/cas", { config: { auth: "public" },
    schema: { summary: "Root and issuing CAs", tags: ["ca"], response: { 200: Type.Object({ cas: Type.Array(CaItem) }) } },
  }, async () => {
    const cur = ca.current().record.id;
    const cas = (await store.listCas()).map((c) => ({
      id: c.id, kind: c.kind, name: c.name, status: c.status, current: c.id === cur, notBefore: c.notBefore, notAfter: c.notAfter,
      ...(c.kind === "issuing" ? { crlUrl: ca.crlUrl(c.id) } : {}), certificatePem: c.certPem,
    }));
    return { cas };
  });
  app.get("/v1/cas/bundle.pem", { config: { auth: "public" },
    schema: { summary: "Trust bundle (roots + every issuing CA), PEM", tags: ["ca"], produces: ["application/pem-certificate-chain"] },
  }, async (_req, reply) => {
    reply.type("application/pem-certificate-chain");
    return ca.trustBundlePem();
  });
};
